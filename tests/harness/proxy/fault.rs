//! The faults: one realistic backend bug each.

/// One realistic backend bug each. Grouped by where the proxy injects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Transparent.
    None,

    // ---- request head and body (agent/operator → server) ----
    /// Any token opens the socket (the token is never compared).
    AcceptsAnyToken,
    /// The edge secret opens the control API (one secret for everything).
    AdminApiOpenToEdgeSecret,
    /// Any token the backend can verify opens the control API, agent tokens included.
    ApiAcceptsAgentTokens,
    /// The admin token opens agent sockets (a superuser token).
    AdminTokenOpensSockets,
    /// `X-Edge-Agent-Id` is never compared with the query parameter.
    IgnoresHeaderIdMismatch,
    /// A missing or empty `edge_agent_id` falls back to the header.
    FallsBackToHeaderId,
    /// Only 401s count toward the per-address limit (`onUnauthorized`
    /// hook): a flood of malformed ids is answered 400 for ever.
    OnlyUnauthorizedCounted,
    /// Upgrades refused 403 (an unknown agent) are never counted per
    /// address: a 429 for an id answered 403 before is a 403 again.
    UnknownAgentsNotCounted,
    /// The old socket is replaced before the new one is authenticated: a
    /// refused upgrade knocks the live socket off.
    RefusedUpgradeKicksLive,
    /// Any `X-Edge-Agent-Id` header is refused (400), even one that agrees.
    RejectsHeaderId,
    /// Without a configured REGISTRATION_TOKEN, anyone registers.
    RegistrationOpenWhenUnconfigured,
    /// An HMAC token's timestamp is never checked for age.
    AcceptsExpiredTokens,
    /// An HMAC token's timestamp may be any time in the future.
    AcceptsFutureTokens,
    /// An HMAC token's agent id is never compared with the connecting id.
    TokenOpensAnyAgent,
    /// An HMAC token's signature is never verified (id and time are trusted).
    SignatureNotVerified,
    /// HMAC tokens are valid for 1 h, not 24 h.
    TokenValidOneHour,
    /// No clock skew: a token from the future is refused.
    NoClockSkew,
    /// The control API lets a request without `Authorization` through.
    ApiAcceptsMissingToken,
    /// `POST /api/agents/{id}/commands` was registered before the admin
    /// middleware: anyone may post commands.
    CommandPostOpen,
    /// A second `PUT /api/agents/{id}` replaces the agent (`INSERT OR
    /// REPLACE` with a cascade): its queued commands are gone.
    ReprovisionDropsQueue,
    /// `/edge/sync` and `/edge/command/ack` trust a per-agent token's id
    /// and never check its signature or age (only the upgrade does).
    HttpTokensNotVerified,
    /// `X-Edge-Agent-Id` names the agent even beside a per-agent token.
    HeaderOverridesAgentToken,
    /// The HTTP ack reads a missing `success` as `false`: a compat
    /// `status` ack fails the command.
    HttpCompatAckFails,
    /// `registration_token` is compared only when it is given.
    RegistrationTokenOptional,
    /// `priority: immediate` is not understood (taken as `normal`).
    ImmediateIsNormal,
    /// A command without `priority` is `low`.
    DefaultPriorityLow,
    /// Only the spec's four command types are accepted (400 for others).
    OnlySpecCommandTypes,
    /// `/edge/sync` trusts the body's `edge_agent_id` over the token's.
    SyncAsAnyone,
    /// `?status=` is ignored: the list has every command of the agent.
    StatusFilterIgnored,
    /// The shared secret is compared over the shorter of the two strings
    /// (a hand-rolled constant-time compare that zips): a prefix opens.
    PrefixSecretAccepted,
    /// The same for the admin token.
    PrefixAdminAccepted,
    /// The same for an HMAC token's signature.
    PrefixSignatureAccepted,
    /// Agent ids are looked up ignoring case (a `_ci` collation).
    AgentIdsCaseInsensitive,
    /// Only the first extra message (or ping) of a socket gets
    /// `rate_limited`; later ones are dropped without an answer.
    OnlyFirstExtraAnswered,
    /// The ping limit is a counter without an expiry: after its first
    /// `pong`, an agent never gets another.
    PingWindowNeverPasses,
    /// The ack timer asks only "acked?": a `sent` command that expired is
    /// pushed again when its attempt 2 is due.
    ExpiredSentRedelivered,
    /// A repeated success ack stamps `completed_at` again.
    FinalAckRestamps,
    /// A repeated `command_id` is answered from the request (`queued`), not
    /// with the stored command.
    RepeatAnswerMadeUp,
    /// `retry` of an unknown command: 409 `not_retryable` (an `UPDATE … WHERE
    /// status IN ('dead','expired')` that matched nothing).
    RetryUnknownIs409,
    /// The command list of an unknown agent is `200 []`.
    UnknownAgentListEmpty,
    /// `config` for an unknown agent is `202 {"delivered": false}`.
    UnknownAgentConfigAccepted,
    /// `pending_commands` counts expired commands (`WHERE acked_at IS NULL`).
    ExpiredCountedPending,
    /// `priority: immediate` is ordered as `high` but pushed as posted.
    ImmediateRelayedAsIs,
    /// Sync answers carry only `command_id`, `parameters` and `attempt`.
    SyncCommandDataPartial,
    /// Sync takes only per-agent tokens: the shared secret gets 401.
    SyncRefusesSharedSecret,
    /// Sync returns only commands it delivered itself: one pushed over a
    /// socket that dropped is never returned.
    SyncSkipsSocketPushed,
    /// `/edge/sync` joins two queries: the queued commands, then the `sent`
    /// ones due again, whatever their priority.
    SyncQueuedBeforeDue,
    /// `/edge/sync` reuses a listing query: newest first within a priority.
    SyncNewestFirstWithinPriority,
    /// `GET /api/agents?connected=true` ignores the filter: every agent.
    ConnectedFilterIgnored,
    /// `?connected=true` lists the agents ever seen (`last_seen` set), not
    /// those connected now: one that disconnected stays.
    ConnectedListFromLastSeen,
    /// `?connected=true` is written as "not disconnected": agents that never
    /// connected (no `last_seen`) are listed too.
    ConnectedListHasNeverConnected,
    /// `GET /api/agents?connected=true` is built from the in-memory socket
    /// registry: every entry shows 0 pending commands and no last status.
    ConnectedListFromRegistry,
    /// A command for an unknown agent is accepted (stored for nobody).
    UnknownAgentCommandAccepted,
    /// A repeated `command_id` is an upsert: the completed command is
    /// queued again (pushed again at the agent's next connect).
    RepeatedIdRequeues,
    /// A repeated `command_id` is an upsert that puts an unfinished command
    /// back to `queued` (`ON CONFLICT DO UPDATE SET status = 'queued' WHERE
    /// status NOT IN (final)`): its progress is lost.
    RepeatResetsInFlight,
    /// The compat alias `POST /edge/ack_command` was forgotten (404).
    NoAckAlias,
    /// The compat alias answers `acknowledged` and does nothing (a route
    /// stubbed to keep old clients quiet, never wired to the ack handler).
    AckAliasIsStub,
    /// `POST /edge/command/ack` answers `acknowledged` and does nothing.
    HttpAckIgnored,
    /// `registration_token` is never compared.
    RegistrationAcceptsAnyToken,
    /// Each registration creates a new agent (not keyed by phone).
    RegistrationNotIdempotent,
    /// `ttl_s` is ignored: commands never expire.
    TtlIgnored,
    /// `command_id` from the control API is ignored: every POST is a new command.
    IgnoresCommandId,
    /// A second connection for a connected agent is refused (409) instead of replacing.
    RefusesSecondConnection,
    /// The edge secret is taken as a registration token.
    EdgeSecretRegisters,
    /// Failed upgrades count against the agent (before auth): strangers lock it out.
    CountsRejectsPerAgent,
    /// The connection limit never resets (an `INCR` without `EXPIRE`): an
    /// agent once answered 429 is answered 429 for good.
    LimitNeverResets,

    // ---- HTTP answers (refused upgrades included) ----
    /// A refused upgrade is a bare 403 without a JSON body.
    RefusesWithBare403,
    /// Error answers carry the error's stack (an error handler that sends
    /// `err.stack`).
    StackTraceInErrors,
    /// A 400 echoes the request's headers, `Authorization` included.
    ErrorEchoesHeaders,
    /// Refuses by accepting the upgrade and closing with 1008 (not 401/403 or 4001).
    RefusesWithClose1008,
    /// Refuses by accepting the upgrade and closing with 4001 six seconds later.
    RefusesLate,
    /// Refuses by accepting, sending `connected`, then closing with 4001.
    WelcomesBeforeRefusing,
    /// An unknown agent gets 401 (not 403 or 4004).
    UnknownAgentIs401,
    /// An unknown agent gets 404.
    UnknownAgentIs404,
    /// An unknown agent gets 403 `{"error":"forbidden"}`.
    UnknownAgentErrorForbidden,
    /// A refused upgrade is a 401 with an HTML body.
    RefusalIsHtml,
    /// Per-agent HMAC tokens are not supported (shared secret only).
    SharedSecretOnly,
    /// An unknown agent is created on its first connect.
    AcceptsUnknownAgents,
    /// A per-agent HMAC token is trusted on its signature alone: only the
    /// shared-secret path looks the agent up, so a token minted for an id
    /// the backend never provisioned opens a socket.
    HmacTokenSkipsAgentLookup,
    /// Ids are not validated: an invalid id is just an unknown agent (403).
    InvalidIdIsUnknownAgent,
    /// The id length is checked the strict way (`< 128`): a 128-character id is 400.
    IdLimitOffByOne,
    /// `user_phone` is never validated on registration (a malformed one is
    /// registered as its digits, at most 20 of them).
    PhoneNotValidated,
    /// The phone length is checked the strict way (`< 20` digits): a 20-digit phone is 400.
    PhoneLimitOffByOne,
    /// An empty `edge_agent_id` is looked up (403 unknown agent), not refused with 400.
    EmptyIdIsUnknownAgent,
    /// Without a configured REGISTRATION_TOKEN, registration answers 401 (compared with "").
    RegistrationDisabledIs401,
    /// The upgrade 429 carries no `Retry-After`.
    RateLimitWithoutRetryAfter,
    /// The token is checked before the limits: past them a wrong token gets 401, not 429.
    AuthBeforeRateLimit,
    /// `Retry-After` in milliseconds (`60000`: a JavaScript `Date` delta).
    RetryAfterInMilliseconds,
    /// Past a rate limit the upgrade is answered 503.
    RateLimitIs503,
    /// No connection rate limit at all: every upgrade is accepted.
    NoConnectRateLimit,
    /// An HTTP ack with the shared secret and no `X-Edge-Agent-Id` is "acknowledged".
    HttpAckWithoutAgentIdAccepted,
    /// HTTP errors are plain text (`Unauthorized`), not JSON.
    HttpErrorsNotJson,
    /// A body over the limit gets the framework's own text 413 (axum's
    /// `DefaultBodyLimit` answers `length limit exceeded`).
    BigBodyIsText413,
    /// A 405 has an empty body (a router's default).
    EmptyBodyOn405,
    /// An unknown route's 404 is the router's default text (`Cannot GET /x`).
    Router404IsText,
    /// A JSON body of the wrong shape gets the framework's extractor
    /// rejection: `422` in text (axum's `Json` default).
    ExtractorRejectionIsText,
    /// Control API errors carry no `message`.
    ApiErrorsWithoutMessage,
    /// Progress acks stop the redelivery, but the state stays `sent`.
    ProgressStateNotShown,
    /// An HTTP ack for another agent's command is taken (no owner check).
    HttpAckNoOwnerCheck,
    /// A late HTTP ack overwrites a final state.
    HttpLastAckWins,
    /// `retry` accepts a command in any state.
    RetryAnyState,
    /// At the pending limit, a repeated `command_id` gets 429 too.
    RepeatedIdAtLimitIs429,
    /// A command posted without `command_id` gets `cmd_<unix seconds>`
    /// (the spec's example id): a second one in the same second is taken
    /// for a repeat of the first, answered 200, and dropped.
    ServerIdsFromClock,
    /// The pending limit counts every command ever stored (`COUNT(*)`, or a
    /// filter that forgets final states): once full, an agent's queue
    /// never takes a new command again.
    QueueFullCountsFinished,
    /// `retry` refuses only commands that are not final (`!isFinal`):
    /// a `completed` or `failed` command is re-queued.
    RetryFinalCommands,
    /// A repeated registration answers a token that opens nothing (minted
    /// for a new id that was never saved).
    ReregistrationTokenUseless,
    /// `/edge/sync` returns `received`/`executing` commands too.
    SyncReturnsInProgress,
    /// A new status is merged into the last one (`status || $new`).
    StatusMerged,
    /// A config for an offline agent answers `delivered: true`.
    ConfigDeliveredWhenOffline,
    /// A config is sent to every connected agent (`wss.clients.forEach`,
    /// Socket.IO's `io.emit` instead of `io.to(agent)`).
    ConfigBroadcast,
    /// `pending_commands` counts `queued`/`sent` only, not progress states.
    PendingIgnoresProgress,
    /// A ping-timed-out agent stays `connected` in the registry.
    TimedOutAgentStaysRegistered,
    /// An HTTP ack for an unknown command answers 200.
    HttpAckUnknownIs200,
    /// Registration answers a token the socket refuses (signed with the wrong key).
    RegistrationTokenUseless,
    /// `/edge/sync` returns commands in insertion order, ignoring priority.
    SyncIgnoresPriority,
    /// `/edge/sync` acknowledges an event id only the first time.
    SyncAcksEventsOnce,
    /// `/edge/sync` answers without `config_updates` (the polling interval never pushed).
    SyncIntervalNotSent,
    /// `/edge/sync` never returns a command again.
    SyncNeverRedelivers,
    /// `/edge/sync` returns sent commands on every sync, ignoring the redelivery time.
    SyncReturnsSentAgain,
    /// The last ack wins: a late ack overwrites a final state.
    LastAckWins,
    /// The control API shows a command's state 300 ms late (a cache, a replica).
    StaleCommandState,
    /// `GET /api/commands/{id}` answers from a cache (500 ms) that only an
    /// ack clears: a push, a sync or a retry stays unseen meanwhile.
    CacheClearedOnAcksOnly,
    /// A command id reused for another agent answers 200 with that agent's command.
    ConflictLeaksOtherAgentsCommand,
    /// Listing by status leaves out final states (dead, expired).
    FinalStatesNotListed,
    /// `retry` keeps the TTL: the command expires again and is never sent.
    RetryKeepsTtl,
    /// `retry` only flips the state: the attempts count on from where they were.
    RetryKeepsAttempts,
    /// A closed agent shows `connected: true` until its ping timeout.
    CloseNotRemovedAtOnce,
    /// A valid token skips the per-address limit (it is checked on failures only).
    AddressLimitSkipsValidTokens,
    /// A full queue accepts the command (202) and evicts the agent's oldest one.
    QueueFullEvictsOldest,
    /// A full queue answers 503.
    QueueFullIs503,
    /// `/edge/sync` re-sorts `parameters` keys.
    SyncResortsParameterKeys,
    /// The stored `status` is read back with its keys re-sorted.
    ResortsStatusKeys,
    /// The control API never shows `sent` (the state changes on acks only).
    SkipsSentState,
    /// A re-pushed command's progress state is reset to `sent`.
    ProgressStateResetOnReconnect,
    /// A `received`/`executing` command that used its attempts goes `dead`.
    ProgressCommandGoesDead,
    /// The sweeper buries every non-final command whose attempts are used
    /// once its last ack deadline passes (`status NOT IN (final)` instead
    /// of `status = 'sent'`): a `received`/`executing` one goes `dead`.
    ProgressBuriedAtAckDeadline,
    /// The TTL sweep covers `queued`/`sent` only: progress states never expire.
    ProgressStateNeverExpires,
    /// A command is never marked `dead` (it stays `sent`).
    DeadNeverMarked,
    /// Commands fetched by `/edge/sync` never go `dead`: only the socket's
    /// ack-timeout job marks them; the sync handler just bumps `attempts`.
    SyncedNeverDead,
    /// The ack timers live on the socket and die with it: a command whose
    /// last attempt went out just before the socket closed stays `sent`
    /// for good (never `dead`, so it cannot be retried).
    LastAttemptStrandedOnClose,
    /// `/metrics` is JSON.
    MetricsAsJson,
    /// `/metrics` has no reconnect counter.
    MetricsWithoutReconnects,
    /// Every family is on the page and none ever moves (the code counts
    /// on instances that were never registered).
    MetricsNeverMove,
    /// Acks are never counted (one increment forgotten); the rest move.
    AcksNotCounted,
    /// The final-state guard forgets `failed`: a later ack overwrites it.
    FailedNotFinal,
    /// The library's default frame limit is left at 16 KiB
    /// (uWebSockets' `maxPayloadLength`): larger messages close with 1009.
    FrameLimit16KiB,
    /// Frames are limited to 64,000 bytes ("64 KB"), not 64 KiB.
    FrameLimit64000,
    /// These counters never move (registered, never incremented).
    ReconnectsNeverCounted,
    PingsNeverCounted,
    ConnectionFailuresNeverCounted,
    NormalDisconnectsUncounted,
    /// The 4000 and 4008 closes carry no reason (`ws.close(4000)`).
    CloseReasonsLeftOut,
    /// The active-connections gauge is decremented in the close handler
    /// only, which a socket the server closes itself never reaches: a
    /// replaced socket (4000), or a timed-out one (4008), stays counted.
    GaugeKeepsReplacedSockets,
    GaugeKeepsTimedOutSockets,
    /// The gauge is incremented on connect and never decremented.
    GaugeNeverFalls,
    /// The gauge is incremented before the upgrade is checked, and a
    /// refused upgrade is never counted out.
    GaugeCountsRefusedUpgrades,
    /// The gauge is registered and never set: always 0.
    GaugeNeverMoves,
    /// With the shared secret, an HTTP ack skips the owner check: any
    /// `X-Edge-Agent-Id` acks any agent's command.
    SharedSecretAckSkipsOwner,
    /// An ack whose `data` is not an object, or whose `command_id` is not
    /// a string, throws in the handler: the socket closes with 1011.
    AckDataNotObjectCrashes,
    /// The redelivery timer runs while the agent is away and counts each
    /// push into no socket: an agent away past ack_timeout + backoff(1)
    /// comes back to two attempts spent.
    AttemptsSpentOffline,
    /// The outbox is kept per channel: a command delivered by `/edge/sync`
    /// is not pushed when the agent then opens its socket.
    SyncedNotPushedOnConnect,
    /// A retry only re-queues: a connected agent gets the command at its
    /// next connect, not at once.
    RetryNotPushedLive,
    /// The pending query forgets `failed` (`status <> 'completed'`): a
    /// failed command is pushed again at the agent's next connect.
    FailedRepushedOnReconnect,
    /// A reconnect pushes the unacked commands first, then the queue
    /// (two queries), whatever their priority.
    SentFirstAtConnect,
    /// Every final ack counts a completed command, a repeated one too
    /// (the counter sits before the "already final?" test).
    RepeatedAckCountedTwice,
    /// A close frame from the agent is recorded with reason `error` (one
    /// reason for every disconnect the server did not start).
    NormalCloseRecordedAsError,
    /// A ping-timeout close is recorded as `normal` (every close the agent's
    /// side ended looks the same to the server).
    PingTimeoutRecordedAsNormal,
    /// A close the server makes for bad input (1009, 1002) is recorded as
    /// `normal`: only the kick and the ping timeout set a reason.
    ErrorCloseRecordedAsNormal,
    /// History records connects only: no `disconnected_at`.
    HistoryWithoutDisconnects,
    /// History without `remote_addr`.
    HistoryWithoutRemoteAddr,
    /// History times have no zone (a naive `DateTime` column in the
    /// history table; everything else says `Z`).
    HistoryTimesWithoutZone,
    /// Commands returned by sync always say `attempt: 1`.
    SyncAttemptNotCounted,

    // ---- agent → server frames ----
    /// Non-JSON text takes the connection down with 1011.
    CrashesOnBadJson,
    /// A binary frame closes the socket with 1003.
    BinaryClosesSocket,
    /// Acks from the agent are ignored.
    IgnoresAcks,
    /// `success: false` completes the command (a truthiness bug).
    FailureAckCompletes,
    /// A failed ack's `error` is not stored.
    AckErrorDropped,
    /// `received`/`executing` complete the command.
    ProgressAckCompletes,
    /// The compat ack dialect (`status`, no `success`) is ignored.
    CompatAckIgnored,
    /// Acks without `timestamp` are refused as `invalid_message`.
    AckNeedsTimestamp,
    /// The sweeper marks a command `dead` once its last attempt is sent,
    /// not once that attempt's ack_timeout has passed: the last attempt's
    /// ack is ignored.
    LastAttemptAckIgnored,
    /// A command pushed again carries the time of the push as `created_at`
    /// (the message built with `new Date()` at send time).
    CreatedAtRestamped,
    /// A rate-limited ping gets its `error` and a `pong` too (a `return`
    /// missing after the error).
    RateLimitedPingAlsoPonged,
    /// Only `success: true` clears the redelivery timer: after a compat
    /// `completed` or a `success: false` ack the command is pushed again,
    /// attempt 2, at ack_timeout + backoff(1).
    FinalAckLeavesTimer,
    /// A strict schema refuses the spec's own ack: `"error": null` is not
    /// a string (zod's `.optional()` without `.nullable()`), so every
    /// successful ack is `invalid_message`.
    NullErrorRefused,
    /// Progress acks (`received`/`executing`) are ignored.
    ProgressAckIgnored,
    /// A failure after `received`/`executing` is ignored (a transition table
    /// without those edges): the command stays in progress for good.
    ProgressCannotFail,
    /// `status` messages are never stored.
    StatusNotStored,
    /// A `status` in a sync body is dropped (only `status` messages are stored).
    SyncStatusIgnored,
    /// A sync without `status` clears the last one (`agent.last_status =
    /// body.status`, None when absent).
    SyncClearsStatus,
    /// Only an agent's first `status` is stored (`ON CONFLICT DO NOTHING`).
    StatusFirstOnly,
    /// Bad input from one agent takes every socket down (a crash).
    BadInputKillsAllSockets,
    /// Only `ping` messages count as a sign of life.
    OnlyPingMessagesCount,
    /// The ping timeout is measured with `ping_interval` (closes too early).
    TimesOutAtPingInterval,

    // ---- server → agent frames ----
    /// No `connected` welcome.
    NoWelcome,
    /// `connected` does not advertise the timers.
    WelcomeWithoutTimers,
    /// Pending commands are pushed before `connected`.
    PendingBeforeWelcome,
    /// WebSocket Ping frames are not a sign of life.
    WsPingsNotCounted,
    /// No `expires_at` on a command with a TTL.
    NoExpiresAt,
    /// `expires_at` is `created_at` (the TTL never added).
    ExpiresAtIsCreatedAt,
    /// WebSocket Pings are answered with an empty Pong (`pong(b"")`), not
    /// one echoing their payload.
    PongLosesPayload,
    /// `protocol_version` is the number 1.0, not the string "1.0".
    WelcomeVersionAsNumber,
    /// `connected` names another agent (a shared welcome object).
    WelcomeWrongAgentId,
    /// `error` messages carry no `message`.
    ErrorWithoutMessage,
    /// Pings are never answered.
    NoPong,
    /// Every ping gets a pong (no ping rate limit).
    NoPingRateLimit,
    /// No message rate limit.
    NoMessageRateLimit,
    /// The ping limit is kept on the socket: a new socket's first ping is
    /// answered, however recent the last pong.
    PingLimitPerSocket,
    /// The "per agent" limits are keyed by remote address (a limiter's
    /// default `req.ip`): agents behind one NAT share one ping a 10 s.
    PingLimitPerAddress,
    /// The message counter is kept on the socket (`ws.msgCount`): a
    /// reconnect starts it again at 0.
    MessageLimitPerSocket,
    /// Past the message limit the socket is closed with 1008.
    RateLimitClosesSocket,
    /// Once an agent is rate limited, commands to it are dropped.
    RateLimitStopsDelivery,
    /// Every bad-input error has the code `invalid_message`.
    OneErrorCodeForAll,
    /// An unknown message type closes the socket with 1003.
    UnknownTypeClosesSocket,
    /// Acks for unknown commands get no `unknown_command`.
    SilentOnUnknownAck,
    /// Acks for unknown commands get `not_found`.
    UnknownAckIsNotFound,
    /// An ack for another agent's command gets `forbidden` (it exists, elsewhere).
    ForeignAckIsForbidden,
    /// JSON with a non-string `type` gets `unknown_type`.
    NoStringTypeIsUnknownType,
    /// The handler reads `msg["type"]` on whatever parsed: JSON that is not
    /// an object (`null`, `[1,2]`, `"ping"`) throws, and the socket closes
    /// with 1011.
    NonObjectJsonCloses1011,
    /// JSON that is not an object is answered `invalid_json` (it did not
    /// unmarshal into the message struct).
    NonObjectJsonIsInvalidJson,
    /// A `status` whose `data` is not an object is stored as it is: no error.
    StatusDataNotChecked,
    /// An ack without `command_id` is ignored silently.
    BadDataIgnored,
    /// Extra pings are dropped silently (no `rate_limited`).
    ExtraPingsDropped,
    /// A message past the limit gets `rate_limited` but is processed
    /// anyway (a status over the limit is stored).
    ExtraMessagesProcessed,
    /// WebSocket Ping frames count toward the message limit (WS-RATE-2 says
    /// control frames do not).
    ControlFramesCounted,
    /// Binary messages are answered `unsupported_frame` but not counted.
    BinaryNotCounted,
    /// An ack for another agent's command is taken (no owner check).
    ForeignAckAccepted,
    /// An ack for another agent's command is taken while that command is in
    /// flight: the owner check is a state check.
    ForeignInFlightAckAccepted,
    /// The "already final: a repeated ack" short cut comes before the owner
    /// check: another agent's ack of a finished command is taken silently
    /// (and `200` over HTTP), which says the command exists.
    FinalCheckBeforeOwner,
    /// The ack handler clears the redelivery timer (kept in one map by
    /// `command_id`) before it checks the owner: another agent's ack of an
    /// in-flight command, answered `unknown_command`, still stops the
    /// owner's redelivery.
    ForeignAckCancelsTimer,
    /// Commands queued while the agent was away are lost on connect.
    DropsQueuedCommands,
    /// Unacked commands are never sent again.
    NeverRedelivers,
    /// Redeliveries come a backoff step late (the backoff is applied twice).
    BackoffTooLong,
    /// Pending commands arrive lowest priority first.
    WrongPriorityOrder,
    /// Pending commands arrive oldest first, whatever their priority.
    IgnoresPriority,
    /// Pending commands sorted by the priority's name (high, low, normal).
    PrioritySortedByName,
    /// Pending commands newest first within a priority.
    LifoWithinPriority,
    /// Ties within a priority broken by `command_id` (`ORDER BY priority,
    /// created_at, id` with `created_at` in whole seconds, or a Redis ZSET
    /// whose equal scores sort by member): commands posted within a second
    /// come in id order.
    FifoTiesByCommandId,
    /// Sent but unacked commands are not pushed again on reconnect.
    UnackedNotRepushed,
    /// The timer of the push before a disconnect still fires after the
    /// reconnect push (a `Map` of timers overwritten without
    /// `clearTimeout`): the next attempt comes early.
    StaleTimerAfterReconnect,
    /// `received`/`executing` commands are not pushed again on reconnect.
    ProgressNotRepushed,
    /// A takeover (a new socket replacing a live one) hands over only the
    /// old socket's `sent` commands; `received`/`executing` ones are not
    /// pushed on the new socket (a reconnect pushes them).
    TakeoverRepushesSentOnly,
    /// The last attempt is never sent (`<` for `<=`).
    OneAttemptTooFew,
    /// A reconnect push does not count as an attempt.
    ReconnectPushNotCounted,
    /// `attempt` counts from 0.
    AttemptStartsAtZero,
    /// `priority` is sent as a number.
    PriorityAsNumber,
    /// `created_at` is epoch milliseconds, not an ISO-8601 string.
    CreatedAtAsEpoch,
    /// `created_at` is an HTTP date (`Thu, 03 Dec 2026 20:44:49 GMT`,
    /// JavaScript's `toUTCString()`), not ISO-8601.
    CreatedAtHttpDate,
    /// `parameters` is sent as a JSON string (a text column).
    ParametersAsString,
    /// Command fields in camelCase (`commandId`, `commandType`).
    CamelCaseCommandFields,
    /// `parameters` (and `payload`) keys re-sorted (a jsonb column).
    ResortsParameterKeys,
    /// Integer-like keys of `parameters` moved first (a JavaScript object).
    IntegerKeysFirst,
    /// A live push sends the posted request; a push at connect or a
    /// redelivery rebuilds the message from a `jsonb` row (keys re-sorted).
    ResortsParametersWhenRepushed,
    /// `payload` re-sorted, `parameters` kept (the copy goes through a map).
    ResortsPayloadKeys,
    /// Numbers in `parameters` re-rounded through f64 (`JSON.parse`).
    RoundsNumbersToDouble,
    /// One delivery past `max_attempts` (`<=` for `<`).
    OneAttemptTooMany,
    /// No `payload` copy of `parameters`.
    NoPayloadCopy,
    /// `config_update` data wrapped as `{"config": …}`.
    ConfigUpdateWrapped,
    /// `config_update` never sent (though the API says delivered).
    ConfigNotPushed,
    /// `config_update` keys re-sorted.
    ResortsConfigKeys,
    /// On a duplicate connection the old socket is never closed.
    KeepsOldSocket,
    /// The replaced socket is closed with 1000, not 4000.
    ReplacedClosesWith1000,
    /// A silent agent is never closed for its missing pings.
    NeverTimesOut,
    /// The replaced socket's close handler clears the agent's idle timer
    /// (`clearTimeout(idle.get(id))`, keyed by agent) after the new socket
    /// armed it: a socket that replaced another never times out.
    ReplacedCleanupClearsIdleTimer,
    /// The ping-timeout close has code 1001, not 4008.
    PingTimeoutCloses1001,
    /// The ping-timeout close comes a whole ping_timeout late.
    TimesOutTooLate,
    /// Shutdown closes sockets with 1001 (going away), not 1012.
    ShutdownCloses1001,
    /// Commands in flight at a restart are lost (an in-memory outbox).
    InFlightLostOnRestart,
    /// Commands waiting for an offline agent are lost on a restart (an in-memory queue).
    QueueInMemory,
    /// TTLs are in-memory timers (`setTimeout` per command): a restart
    /// forgets them, and the commands never expire.
    TtlLostOnRestart,
    /// The old socket's cleanup, run after a replacing socket's push,
    /// cancels the command's redelivery timer: on the new socket a command
    /// is never pushed again.
    ReplacedCleanupCancelsTimer,
    /// The sweeper expires every command past its TTL, final ones too.
    FinalCommandsExpireAtTtl,
    /// The TTL restarts at every push (the push re-saves the command with
    /// its TTL, `SET cmd:{id} … EX ttl`, or re-arms an expiry timer).
    TtlRestartsOnPush,
    /// Every request is logged with its headers, `Authorization` included
    /// (a request logger at debug level left on): the proxy appends the
    /// lines to the server's log.
    TokensLogged,
    /// The spec's log lines are never written (the server logs warnings
    /// only); the proxy does nothing: `faults.rs` configures the server so.
    SpecLogLinesMissing,
    /// A 202 before the command is written: a write-behind store that
    /// flushes every second loses the last second's commands on a crash.
    AcceptedBeforeDurable,
    /// Pushing pops a command off the durable queue and keeps it in memory
    /// until acked (put back only on a graceful shutdown): a crash loses it.
    InFlightLostOnCrash,
    /// `connected` is a persisted flag that nobody resets at boot: after a
    /// crash the agents connected then still show connected.
    GhostConnectionAfterCrash,
    /// A final HTTP ack is answered at once and written a second later: a
    /// crash in between loses it, and the command is pushed again.
    AckWrittenBehind,
    /// Commands in flight on a replaced socket are lost (its outbox dies with it).
    ReplacementLosesInFlight,
    /// Shutdown drops the sockets without a close frame.
    ShutdownDropsSockets,
    /// A WebSocket protocol error drops the connection without a close frame.
    ProtocolErrorNoCloseFrame,
    /// The replaced socket's cleanup unregisters the agent's new socket.
    ReplacedCleanupUnregistersNew,
    /// An oversized frame closes with 1011, not 1009.
    OversizeCloses1011,
    /// Invalid UTF-8 closes with 1002, not 1007.
    BadUtf8Closes1002,
    /// A replaced socket is counted as a `normal` disconnect: the
    /// `replaced` series never moves.
    ReplacedCountedAsNormal,
    /// Every command outcome is counted as `completed`: `failed` never moves.
    FailedCountedAsCompleted,
    /// Every ack is counted by its transport, not its result: the `failed`
    /// series never moves.
    FailedAcksUncounted,
    /// Every delivery is counted under `ws`, commands fetched by
    /// `/edge/sync` too.
    HttpDeliveriesCountedAsWs,
    /// Timestamps are written without a zone (Python's
    /// `datetime.utcnow().isoformat()`).
    TimestampsWithoutZone,
    /// Timestamps are local time (UTC+1) marked `Z`.
    LocalTimeMarkedZ,
    /// `connected` only on an agent's first socket.
    WelcomeOnlyOnFirstSocket,
    /// A replaced socket's disconnect is never recorded (the close handler's
    /// history write sits inside `if (registry.get(id) === ws)`).
    ReplacedDisconnectNotRecorded,
    /// `last_status` lives on the socket: gone once the agent disconnects.
    StatusKeptWithSocket,
    /// `/edge/register` answers the shared secret as `auth_token`.
    RegisterHandsOutSharedSecret,
    /// An ack with no outcome (`{command_id}` alone, `status: "done"`,
    /// `success: "false"`) completes the command.
    AckWithoutOutcomeCompletes,
    /// A `received` ack after `executing` moves the command back.
    ProgressMovesBack,
    /// Ids are `[A-Za-z0-9-]`: `.` and `_` are refused with 400.
    IdSyntaxNoDots,
    /// Ids are `\w` with Unicode: `café` is valid (then unknown, 403).
    IdSyntaxUnicode,
    /// Only the first socket gets 1012 at shutdown; the rest are dropped.
    OnlyFirstSocketGets1012,
    /// `received` leaves the ack timer running (only `executing` stops it).
    ReceivedAckLeavesTimer,
    /// Only a socket ack clears the socket's redelivery timer; its callback
    /// asks only "final yet?", so a progress ack over HTTP (`received`,
    /// `executing`) leaves the command to be pushed again.
    HttpProgressAckLeavesTimer,
    /// A 400 to an upgrade is the framework's text (`Bad Request`).
    UpgradeErrorsNotJson,
    /// The upgrade's 429 is the rate limiter's default text
    /// (express-rate-limit's "Too many requests"), `Retry-After` kept.
    RateLimitedUpgradeIsText,
    /// An upgrade without `Authorization` gets FastAPI `HTTPBearer`'s
    /// `403 {"detail": "Not authenticated"}`.
    MissingTokenIsBearerDetail,

    // ---- for the load tests (load.rs), not the conformance suite ----
    /// Every tenth command pushed is never pushed (none of its attempts):
    /// accepted, then lost.
    EveryTenthCommandNeverPushed,
    /// Every tenth command's first push reaches the agent twice.
    EveryTenthCommandPushedTwice,
    /// Every push reaches the agent 200 ms late (a slow queue).
    EveryPushDelayed200ms,
}

/// The faults the load tests use (a load run must count what they do),
/// which no conformance check is meant to catch one by one.
pub const LOAD_FAULTS: [Fault; 3] = [
    Fault::EveryTenthCommandNeverPushed,
    Fault::EveryTenthCommandPushedTwice,
    Fault::EveryPushDelayed200ms,
];
