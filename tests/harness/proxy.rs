//! A fault-injecting proxy in front of a correct edge-server: each [`Fault`]
//! turns it into a backend with one realistic bug, so the tests can show
//! that the suite catches it and names the right rule. Fault code lives
//! here, in the tests, never in the server's request path.
//!
//! The proxy speaks HTTP/1.1 and WebSocket on both sides:
//!
//! - a plain HTTP request is one request per connection (`connection:
//!   close` towards the server), so the proxy reads the whole request and
//!   the whole answer and may rewrite either;
//! - an upgrade request is relayed; a refused upgrade's answer may be
//!   rewritten like any answer; an accepted one becomes two WebSockets
//!   (agent side, server side) and every frame passes through the proxy.
//!
//! The fault logic is grouped by where it acts: [`Proxy::request`] (request
//! head and body), [`Proxy::response`] (HTTP answers, refused upgrades
//! included), [`Proxy::agent_frame`] (agent → server frames) and
//! [`Proxy::server_frame`] (server → agent frames). The upstream connection
//! is made from the agent's own source address, so the server's
//! per-address limits (WS-RATE-1) see what they would see without a proxy.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use edge_harness::early_answer::dechunk;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use ordered::Json;

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
    /// `GET /api/agents?connected=true` ignores the filter: every agent.
    ConnectedFilterIgnored,
    /// `?connected=true` lists the agents ever seen (`last_seen` set), not
    /// those connected now: one that disconnected stays.
    ConnectedListFromLastSeen,
    /// `?connected=true` is written as "not disconnected": agents that never
    /// connected (no `last_seen`) are listed too.
    ConnectedListHasNeverConnected,
    /// A command for an unknown agent is accepted (stored for nobody).
    UnknownAgentCommandAccepted,
    /// A repeated `command_id` is an upsert: the completed command is
    /// queued again (pushed again at the agent's next connect).
    RepeatedIdRequeues,
    /// The compat alias `POST /edge/ack_command` was forgotten (404).
    NoAckAlias,
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
    /// The TTL sweep covers `queued`/`sent` only: progress states never expire.
    ProgressStateNeverExpires,
    /// A command is never marked `dead` (it stays `sent`).
    DeadNeverMarked,
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
    /// History records connects only: no `disconnected_at`.
    HistoryWithoutDisconnects,
    /// History without `remote_addr`.
    HistoryWithoutRemoteAddr,
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
    /// `status` messages are never stored.
    StatusNotStored,
    /// A `status` in a sync body is dropped (only `status` messages are stored).
    SyncStatusIgnored,
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
    /// Sent but unacked commands are not pushed again on reconnect.
    UnackedNotRepushed,
    /// `received`/`executing` commands are not pushed again on reconnect.
    ProgressNotRepushed,
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
}

pub struct Secrets {
    pub edge: String,
    pub admin: String,
    pub registration: String,
}

/// A running proxy: where it listens, and what the test tells it.
#[derive(Clone)]
pub struct Handle {
    pub addr: SocketAddr,
    proxy: Arc<Proxy>,
}

impl Handle {
    /// The backend is being restarted (the test's restarter says so; the
    /// proxy cannot see a restart while no socket is open).
    pub fn restarting(&self) {
        if self.proxy.fault == Fault::TtlLostOnRestart {
            let mut memory = self.proxy.memory();
            let forgotten: Vec<String> = memory.with_ttl.iter().cloned().collect();
            memory.ttl_forgotten.extend(forgotten);
        }
        if self.proxy.fault == Fault::QueueInMemory {
            let mut memory = self.proxy.memory();
            let pushed: HashSet<String> = memory.pushed.values().flatten().cloned().collect();
            let waiting: Vec<String> = memory.queued.difference(&pushed).cloned().collect();
            memory.lost.extend(waiting);
        }
    }

    /// The backend is about to be killed (the test's crasher says so):
    /// what a broken backend kept only in memory is gone.
    pub fn crashing(&self) {
        self.proxy.crashes.send_modify(|n| *n += 1);
        let mut memory = self.proxy.memory();
        let lost: Vec<String> = match self.proxy.fault {
            Fault::AcceptedBeforeDurable => memory
                .accepted_at
                .iter()
                .filter(|(_, at)| at.elapsed() < WRITE_BEHIND)
                .map(|(id, _)| id.clone())
                .collect(),
            Fault::InFlightLostOnCrash => memory.pushed.values().flatten().cloned().collect(),
            Fault::GhostConnectionAfterCrash => {
                let live = memory.live.iter().filter(|(_, n)| **n > 0);
                let agents: Vec<String> = live.map(|(agent, _)| agent.clone()).collect();
                memory.ghosts.extend(agents);
                return;
            }
            _ => return,
        };
        memory.lost.extend(lost);
    }
}

/// How long a write-behind fault keeps a write in memory.
const WRITE_BEHIND: Duration = Duration::from_secs(1);

/// Starts the proxy on an ephemeral loopback port; it runs until the test
/// ends. `log` is the server's log, for the faults that write to it.
pub async fn start(
    upstream: SocketAddr,
    fault: Fault,
    secrets: Secrets,
    log: Option<std::path::PathBuf>,
) -> Handle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = Arc::new(Proxy {
        upstream,
        fault,
        secrets,
        memory: Mutex::new(Memory::default()),
        crash: watch::channel(0).0,
        crashes: watch::channel(0).0,
        log,
    });
    let handle = Handle {
        addr,
        proxy: proxy.clone(),
    };
    tokio::spawn(async move {
        while let Ok((client, peer)) = listener.accept().await {
            tokio::spawn(proxy.clone().handle(client, peer));
        }
    });
    handle
}

struct Proxy {
    upstream: SocketAddr,
    fault: Fault,
    secrets: Secrets,
    memory: Mutex<Memory>,
    /// Bumped when the "server" crashes: every session ends.
    crash: watch::Sender<u32>,
    /// Bumped when the test kills the real server ([`Handle::crashing`]).
    crashes: watch::Sender<u32>,
    /// The server's log.
    log: Option<std::path::PathBuf>,
}

/// What a broken backend remembers across connections (only the faults
/// that need it fill it in).
#[derive(Default)]
struct Memory {
    /// Open agent sockets per agent id.
    live: HashMap<String, usize>,
    /// Commands pushed to each agent, on any of its sockets.
    pushed: HashMap<String, HashSet<String>>,
    /// Refused upgrades per agent id (CountsRejectsPerAgent).
    rejects: HashMap<String, u32>,
    /// Agents once answered 429 (LimitNeverResets).
    limited: HashSet<String>,
    /// The latest ack per command, as a status.
    last_ack: HashMap<String, String>,
    /// When each agent last closed its socket.
    closed_at: HashMap<String, Instant>,
    /// Commands put back by `retry`.
    retried: HashSet<String>,
    /// The highest attempt pushed per command (before any retry).
    attempts: HashMap<String, u64>,
    /// Commands accepted by the control API.
    created: HashSet<String>,
    /// Commands lost for good (a restart's, QueueFullEvictsOldest's).
    lost: HashSet<String>,
    /// AcceptedBeforeDurable: when each command was answered 202.
    accepted_at: HashMap<String, Instant>,
    /// Commands the control API accepted while their agent was away.
    queued: HashSet<String>,
    /// Commands pushed again on a later socket.
    repushed: HashSet<String>,
    /// The latest progress state (`received`/`executing`) acked per command.
    progress: HashMap<String, String>,
    /// OneAttemptTooMany: until when a command is shown `sent` instead of `dead`.
    extra_until: HashMap<String, Instant>,
    /// QueueFullEvictsOldest: agents whose oldest command is to be lost.
    evict: HashSet<String>,
    /// Agents whose registry entry a replaced socket's cleanup removed.
    unregistered: HashSet<String>,
    /// `max_attempts` as advertised in `connected`.
    max_attempts: u64,
    /// Agents the control API refused a command for (queue full).
    full: HashSet<String>,
    /// Phones registered (ReregistrationTokenUseless).
    phones: HashSet<String>,
    /// Commands on their last attempt when their socket closed
    /// (LastAttemptStrandedOnClose).
    stranded_on_close: HashSet<String>,
    /// The id made from the clock, and when (ServerIdsFromClock).
    clock_id: Option<(String, Instant)>,
    /// When each address last sent a ping (PingLimitPerAddress).
    pinged_from: HashMap<Option<IpAddr>, Instant>,
    /// Agents whose last socket was closed for its missing pings.
    timed_out: HashSet<String>,
    /// Agents that sent a status (StatusFirstOnly).
    status_seen: HashSet<String>,
    /// Per agent: every status member it ever sent (StatusMerged).
    statuses: HashMap<String, Vec<(String, Json)>>,
    /// What `/edge/sync` returned per agent.
    synced: HashMap<String, Vec<Value>>,
    /// Event ids `/edge/sync` acknowledged.
    events: HashSet<String>,
    /// Per command: the state shown, and a newer one with when it was first seen.
    shown: HashMap<String, (Value, Option<(Value, Instant)>)>,
    /// Commands that got a final ack (RepeatedAckCountedTwice).
    final_acked: HashSet<String>,
    /// Final acks for commands already final (RepeatedAckCountedTwice).
    repeated_final_acks: u64,
    /// Agents provisioned once, and those provisioned again
    /// (ReprovisionDropsQueue).
    provisioned: HashSet<String>,
    reprovisioned: HashSet<String>,
    /// Commands posted with `ttl_s`, and those whose TTL a restart forgot
    /// (TtlLostOnRestart).
    with_ttl: HashSet<String>,
    ttl_forgotten: HashSet<String>,
    /// Commands `/edge/sync` delivered (SyncedNotPushedOnConnect).
    via_sync: HashSet<String>,
    /// When each command was retried (RetryNotPushedLive).
    retried_at: HashMap<String, Instant>,
    /// Agents connected when the backend crashed (GhostConnectionAfterCrash).
    ghosts: HashSet<String>,
    /// Every command frame pushed, by id, with its agent (only for the
    /// faults that read it: FinalAckLeavesTimer, FailedRepushedOnReconnect, RepeatedIdRequeues,
    /// AttemptsSpentOffline).
    frames: HashMap<String, (String, Message)>,
    /// Commands a fault pushes again at their agent's next connect.
    replay: HashSet<String>,
    /// Agents answered `rate_limited` once (OnlyFirstExtraAnswered).
    limited_once: HashSet<String>,
    /// When a repeated success ack came, per command (FinalAckRestamps).
    restamped: HashMap<String, String>,
    /// Agents answered `pong` once (PingWindowNeverPasses).
    ponged: HashSet<String>,
    /// Commands posted with `priority: immediate` (ImmediateRelayedAsIs).
    immediate: HashSet<String>,
    /// Commands posted with a `ttl_s`, per agent (ExpiredCountedPending).
    ttl_posts: HashMap<String, u64>,
}

/// A parsed HTTP message: the head without its blank line, and the body.
#[derive(Clone)]
struct Http {
    head: String,
    body: Vec<u8>,
}

/// What happens to an agent's socket after a frame.
enum Act {
    /// Forward to the server.
    Server(Message),
    /// Send to the agent now.
    Agent(Message),
    /// Send to the agent at this time (kept in order of time), unless it
    /// is a command the agent acked meanwhile.
    AgentAt(Instant, Message),
    /// Send to the agent at this time, acked or not: a command pushed
    /// again after it finished.
    ReplayAt(Instant, Message),
    /// A command pushed at connect: held, then released re-ordered.
    Hold(Json),
    /// Close the agent's socket with this code; the session ends.
    Close(u16, &'static str),
    /// The agent's socket stays up, but nothing from the server reaches it.
    Deafen,
    /// Drop both connections, no close frame.
    Drop,
    /// Store this `status` as the agent's (`POST /edge/sync`, edge secret)
    /// before anything else is relayed.
    StoreStatus(Value),
}

/// One agent socket through the proxy.
struct Session {
    agent: String,
    /// The agent's address (the same for every agent of a check).
    ip: Option<IpAddr>,
    /// The last frame of any kind from the agent, and the last `ping` message.
    last_frame: Instant,
    last_ping: Instant,
    last_type: String,
    /// The last message from the agent was JSON without a string `type`.
    untyped: bool,
    /// When the socket opened.
    opened: Instant,
    /// Text and binary messages from the agent (WS-RATE-2 counts them).
    messages: u32,
    /// `ping` messages from the agent.
    pings: u32,
    rate_limited: bool,
    ping_interval: Duration,
    ping_timeout: Duration,
    ack_timeout: Duration,
    max_attempts: u64,
    /// Commands the agent acked on this socket.
    acked: HashSet<String>,
    /// Commands pushed on this socket.
    seen: HashSet<String>,
    /// What the agent sent past the message limit (a status's data, else
    /// null), until the server's `rate_limited` for it comes back
    /// (ExtraMessagesProcessed).
    ignored: VecDeque<Value>,
}

/// Commands pending at connect are held until none has come for this long,
/// then released in a fault's order.
const HOLD: Duration = Duration::from_millis(200);

impl Proxy {
    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap()
    }

    async fn handle(self: Arc<Self>, mut client: TcpStream, peer: SocketAddr) {
        let Some((head, rest)) = read_head(&mut client).await else {
            return;
        };
        let mut request = Http { head, body: rest };
        let length = request.content_length();
        while request.body.len() < length {
            let mut chunk = [0u8; 4096];
            match client.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.body.extend_from_slice(&chunk[..n]),
            }
        }
        let upgrade = request
            .header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        if self.fault == Fault::TokensLogged {
            self.log_request(&request);
        }
        if let Some(answer) = self.request(&mut request) {
            let _ = client.write_all(&answer.to_bytes()).await;
            return;
        }
        if !upgrade {
            // One request per connection, so every request passes through here.
            request.set_header("connection", "close");
            let Some(mut server) = self.connect_upstream(peer).await else {
                return;
            };
            // A server may answer before it has read the whole body (a 413)
            // and close: what it answered is read all the same.
            let _ = server.write_all(&request.to_bytes()).await;
            let mut raw = Vec::new();
            let _ = server.read_to_end(&mut raw).await;
            if raw.is_empty() {
                return;
            }
            // Said on every answer, so the client never reuses the connection.
            let answer = match Http::parse(&raw) {
                Some(mut answer) => {
                    self.response(&request, &mut answer).await;
                    answer.set_header("connection", "close");
                    answer.to_bytes()
                }
                None => raw,
            };
            let _ = client.write_all(&answer).await;
            return;
        }
        self.upgrade(client, peer, request).await;
    }

    /// TokensLogged: one line in the server's log, headers and all.
    fn log_request(&self, request: &Http) {
        let Some(path) = &self.log else { return };
        let line = format!(
            "2026-01-01T00:00:00Z DEBUG http: {} {} authorization={:?}\n",
            request.method(),
            request.path(),
            request.header("authorization").unwrap_or("")
        );
        let file = std::fs::OpenOptions::new().append(true).open(path);
        if let Ok(mut file) = file {
            use std::io::Write as _;
            let _ = file.write_all(line.as_bytes());
        }
    }

    /// Sends `request` to the server after [`WRITE_BEHIND`], unless the
    /// server crashes first.
    fn write_behind(&self, mut request: Http) {
        request.set_header("connection", "close");
        let (upstream, mut crashes) = (self.upstream, self.crashes.subscribe());
        tokio::spawn(async move {
            tokio::select! {
                _ = crashes.changed() => {}
                _ = tokio::time::sleep(WRITE_BEHIND) => {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = server.write_all(&request.to_bytes()).await;
                        let _ = server.read_to_end(&mut Vec::new()).await;
                    }
                }
            }
        });
    }

    /// From the agent's own source address (loopback only), so per-address
    /// limits work as without a proxy.
    async fn connect_upstream(&self, peer: SocketAddr) -> Option<TcpStream> {
        let socket = TcpSocket::new_v4().ok()?;
        if peer.ip().is_loopback() {
            socket.bind(SocketAddr::new(peer.ip(), 0)).ok()?;
        }
        socket.connect(self.upstream).await.ok()
    }

    async fn upgrade(self: Arc<Self>, mut client: TcpStream, peer: SocketAddr, request: Http) {
        let agent = query_param(request.path(), "edge_agent_id").unwrap_or_default();
        // A new socket registers the agent again (before the server replaces the old one).
        self.memory().unregistered.remove(&agent);
        // A replacement loses what was pushed on the old socket, decided
        // now: were it decided when the 4000 close crosses the old socket,
        // the new socket's redelivery could win that race and pass.
        if self.fault == Fault::ReplacementLosesInFlight {
            let mut memory = self.memory();
            if memory.live.get(&agent).is_some_and(|&n| n > 0) {
                let pushed = memory.pushed.get(&agent).cloned().unwrap_or_default();
                memory.lost.extend(pushed);
            }
        }
        let mut tries = 0;
        let (server, server_rest) = loop {
            tries += 1;
            // AddressLimitSkipsValidTokens retries from another address.
            let from = if tries == 1 {
                peer
            } else {
                ([127, 0, 0, 1], 0).into()
            };
            let Some(mut server) = self.connect_upstream(from).await else {
                return;
            };
            if server.write_all(&request.to_bytes()).await.is_err() {
                return;
            }
            let Some((head, mut rest)) = read_head(&mut server).await else {
                return;
            };
            if head.starts_with("HTTP/1.1 101") {
                if client.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                break (server, rest);
            }
            let mut answer = Http {
                head,
                body: Vec::new(),
            };
            let length = answer.content_length();
            while rest.len() < length {
                let mut chunk = [0u8; 4096];
                match server.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => rest.extend_from_slice(&chunk[..n]),
                }
            }
            answer.body = rest;
            let refused_as = |code: u16| (answer.status() == code).then_some(code);
            match self.fault {
                Fault::AcceptsUnknownAgents if tries == 1 && refused_as(403).is_some() => {
                    // Auto-provisioning: the agent is created, then let in.
                    self.admin("PUT", &format!("/api/agents/{agent}"), "{}")
                        .await;
                    continue;
                }
                Fault::AddressLimitSkipsValidTokens
                    if tries == 1 && refused_as(429).is_some() && self.valid_token(&request) =>
                {
                    continue;
                }
                // The refusal comes after a slow token lookup.
                Fault::RefusesLate if refused_as(401).is_some() => {
                    let after = Duration::from_secs(6);
                    return accept_then_close(client, &request, None, 4001, after).await;
                }
                Fault::RefusesWithClose1008 if refused_as(401).is_some() => {
                    return accept_then_close(client, &request, None, 1008, Duration::ZERO).await;
                }
                Fault::WelcomesBeforeRefusing if refused_as(401).is_some() => {
                    let hello = json!({"type": "connected", "data": {"edge_agent_id": agent}});
                    return accept_then_close(client, &request, Some(hello), 4001, Duration::ZERO)
                        .await;
                }
                Fault::NoConnectRateLimit if refused_as(429).is_some() => {
                    return accept_then_close(client, &request, None, 0, Duration::ZERO).await;
                }
                _ => {}
            }
            self.response(&request, &mut answer).await;
            // This connection ends here: the client must not reuse it.
            answer.set_header("connection", "close");
            let _ = client.write_all(&answer.to_bytes()).await;
            return;
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20));
        let agent_ws = WebSocketStream::from_raw_socket(client, Role::Server, Some(config)).await;
        let server_ws =
            WebSocketStream::from_partially_read(server, server_rest, Role::Client, Some(config))
                .await;
        *self.memory().live.entry(agent.clone()).or_default() += 1;
        self.pump(agent.clone(), agent_ws, server_ws).await;
        let mut memory = self.memory();
        *memory.live.entry(agent.clone()).or_default() -= 1;
        if self.fault == Fault::LastAttemptStrandedOnClose {
            let last = memory.max_attempts;
            let on_last: Vec<String> = (memory.pushed.get(&agent).into_iter().flatten())
                .filter(|id| memory.attempts.get(*id) == Some(&last))
                .cloned()
                .collect();
            memory.stranded_on_close.extend(on_last);
        }
        memory.closed_at.insert(agent, Instant::now());
    }

    /// The shared secret or an HMAC-shaped token (the proxy does not verify HMACs).
    fn valid_token(&self, request: &Http) -> bool {
        let bearer = request.header("authorization").unwrap_or("");
        bearer == format!("Bearer {}", self.secrets.edge)
            || bearer
                .strip_prefix("Bearer ")
                .and_then(hmac_token)
                .is_some()
    }

    /// A control-API call of the proxy's own (admin token), answer as JSON.
    async fn admin(&self, method: &str, path: &str, body: &str) -> Option<(u16, Value)> {
        self.call(&self.secrets.admin, method, path, body).await
    }

    /// A call of the proxy's own to the server with this token, answer as JSON.
    async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: &str,
    ) -> Option<(u16, Value)> {
        let mut stream = TcpStream::connect(self.upstream).await.ok()?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let answer = Http::parse(&raw)?;
        Some((answer.status(), answer.json().unwrap_or(Value::Null)))
    }

    // ---------------------------------------------------------------
    // Request head and body. `Some(answer)` answers without the server.
    // ---------------------------------------------------------------

    fn request(&self, request: &mut Http) -> Option<Http> {
        let path = request.path().to_string();
        let socket = path.starts_with("/edge/ws");
        let bearer = request
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let hmac = bearer.as_deref().and_then(hmac_token);
        let agent = query_param(&path, "edge_agent_id").unwrap_or_default();
        let edge = format!("Bearer {}", self.secrets.edge);
        let admin = format!("Bearer {}", self.secrets.admin);
        let now = unix_now();
        match self.fault {
            // The upgrade (`/edge/ws`).
            Fault::AcceptsAnyToken if socket => request.set_header("authorization", &edge),
            Fault::AdminTokenOpensSockets
                if socket && request.header("authorization") == Some(&admin) =>
            {
                request.set_header("authorization", &edge)
            }
            Fault::IgnoresHeaderIdMismatch if socket => request.remove_header("x-edge-agent-id"),
            Fault::FallsBackToHeaderId if socket && agent.is_empty() => {
                if let Some(id) = request.header("x-edge-agent-id").map(str::to_string) {
                    request.set_path(&format!("/edge/ws?edge_agent_id={id}"));
                }
            }
            Fault::AcceptsExpiredTokens
                if socket
                    && hmac
                        .as_ref()
                        .is_some_and(|t| t.0 == agent && t.1 < now - 86_400) =>
            {
                request.set_header("authorization", &edge)
            }
            Fault::AcceptsFutureTokens
                if socket
                    && hmac
                        .as_ref()
                        .is_some_and(|t| t.0 == agent && t.1 > now + 300) =>
            {
                request.set_header("authorization", &edge)
            }
            Fault::TokenOpensAnyAgent if socket && hmac.as_ref().is_some_and(|t| t.0 != agent) => {
                request.set_header("authorization", &edge)
            }
            Fault::SignatureNotVerified
                if socket
                    && hmac.as_ref().is_some_and(|t| {
                        t.0 == agent && (now - 86_400..=now + 300).contains(&t.1)
                    }) =>
            {
                request.set_header("authorization", &edge)
            }
            Fault::IdLimitOffByOne if socket && agent.len() == 128 => {
                return Some(Http::answer(
                    400,
                    json!({"error": "invalid_agent_id", "message": "edge_agent_id is too long"}),
                ));
            }
            Fault::TokenValidOneHour
                if socket && hmac.as_ref().is_some_and(|t| t.1 < now - 3600) =>
            {
                return Some(Http::answer(
                    401,
                    json!({"error": "unauthorized", "message": "token expired"}),
                ));
            }
            Fault::NoClockSkew if socket && hmac.as_ref().is_some_and(|t| t.1 > now) => {
                return Some(Http::answer(
                    401,
                    json!({"error": "unauthorized", "message": "token from the future"}),
                ));
            }
            Fault::SharedSecretOnly if socket && hmac.is_some() => {
                return Some(Http::answer(
                    401,
                    json!({"error": "unauthorized", "message": "invalid token"}),
                ));
            }
            Fault::RejectsHeaderId if socket && request.header("x-edge-agent-id").is_some() => {
                return Some(Http::answer(
                    400,
                    json!({"error": "bad_request", "message": "unexpected header"}),
                ));
            }
            Fault::RefusesSecondConnection
                if socket && self.memory().live.get(&agent).is_some_and(|n| *n > 0) =>
            {
                return Some(Http::answer(
                    409,
                    json!({"error": "already_connected", "message": "this agent is connected"}),
                ));
            }
            Fault::LimitNeverResets if socket && self.memory().limited.contains(&agent) => {
                return Some(too_many_attempts());
            }
            Fault::CountsRejectsPerAgent
                if socket && self.memory().rejects.get(&agent).is_some_and(|n| *n >= 10) =>
            {
                return Some(too_many_attempts());
            }
            // The edge's HTTP endpoints.
            Fault::HttpLastAckWins if path == "/edge/command/ack" => {
                let ack = request.json().unwrap_or_default();
                let status = match (&ack["success"], ack["status"].as_str()) {
                    (Value::Bool(true), _) => "completed",
                    (Value::Bool(false), _) => "failed",
                    (_, Some(status)) => status,
                    _ => "",
                };
                if let Some(id) = ack["command_id"].as_str() {
                    self.memory()
                        .last_ack
                        .insert(id.to_string(), status.to_string());
                }
            }
            Fault::SyncAsAnyone if path == "/edge/sync" => {
                let named = request
                    .json()
                    .and_then(|b| b["edge_agent_id"].as_str().map(str::to_string));
                if hmac.is_some_and(|t| Some(t.0) != named) {
                    request.set_header("authorization", &edge);
                }
            }
            Fault::HttpTokensNotVerified
                if !socket && path.starts_with("/edge/") && hmac.is_some() =>
            {
                let id = hmac.unwrap().0;
                request.set_header("authorization", &edge);
                request.set_header("x-edge-agent-id", &id);
            }
            Fault::HeaderOverridesAgentToken
                if !socket
                    && path.starts_with("/edge/")
                    && hmac.is_some()
                    && request.header("x-edge-agent-id").is_some() =>
            {
                request.set_header("authorization", &edge)
            }
            Fault::HttpCompatAckFails
                if path == "/edge/command/ack" || path == "/edge/ack_command" =>
            {
                request.edit_json(|body| {
                    if body.get("success").is_none() {
                        body.remove("status");
                        body.insert("success", Json::Bool(false));
                    }
                });
            }
            // The same id for posts within 2 s of the first, so the second of
            // a check's two never lands in the next second by chance.
            Fault::ServerIdsFromClock if is_command_post(request) => {
                let id = {
                    let mut memory = self.memory();
                    let made = memory.clock_id.take();
                    let (id, at) = made
                        .filter(|(_, at)| at.elapsed() < Duration::from_secs(2))
                        .unwrap_or_else(|| (format!("cmd_{now}"), Instant::now()));
                    memory.clock_id = Some((id.clone(), at));
                    Json::String(id)
                };
                request.edit_json(|body| {
                    if body.get("command_id").is_none() {
                        body.insert("command_id", id);
                    }
                });
            }
            Fault::RegistrationTokenOptional if path == "/edge/register" => {
                let token = Json::String(self.secrets.registration.clone());
                request.edit_json(|body| {
                    let given = body.get("registration_token");
                    if given.is_none_or(|t| *t == Json::Null || *t == Json::String(String::new())) {
                        body.insert("registration_token", token);
                    }
                });
            }
            Fault::HttpAckIgnored if path == "/edge/command/ack" => {
                return Some(Http::answer(200, json!({"acknowledged": true})));
            }
            Fault::AckWrittenBehind if path == "/edge/command/ack" => {
                self.write_behind(request.clone());
                return Some(Http::answer(200, json!({"acknowledged": true})));
            }
            Fault::NoAckAlias if path == "/edge/ack_command" => {
                return Some(Http::answer(
                    404,
                    json!({"error": "not_found", "message": "no route"}),
                ));
            }
            Fault::RegistrationAcceptsAnyToken if path == "/edge/register" => {
                let token = Json::String(self.secrets.registration.clone());
                request.edit_json(|body| body.insert("registration_token", token));
            }
            Fault::RegistrationNotIdempotent if path == "/edge/register" => {
                // A different phone every time (a random suffix repeated
                // once in 90 registrations, and the fault then passed).
                static REGISTRATIONS: AtomicU64 = AtomicU64::new(0);
                let salt = REGISTRATIONS.fetch_add(1, Ordering::Relaxed);
                request.edit_json(|body| {
                    if let Some(Json::String(phone)) = body.get_mut("user_phone") {
                        phone.push_str(&format!("{salt:02}"));
                    }
                });
            }
            Fault::SyncStatusIgnored if path == "/edge/sync" => {
                request.edit_json(|body| {
                    body.remove("status");
                });
            }
            Fault::PhoneNotValidated if path == "/edge/register" => {
                request.edit_json(|body| {
                    if let Some(Json::String(phone)) = body.get_mut("user_phone") {
                        let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
                        *phone = format!("{:0<3.20}", digits);
                    }
                });
            }
            Fault::PhoneLimitOffByOne
                if path == "/edge/register"
                    && request.json().is_some_and(|body| {
                        body["user_phone"]
                            .as_str()
                            .is_some_and(|p| p.chars().filter(char::is_ascii_digit).count() == 20)
                    }) =>
            {
                return Some(Http::answer(
                    400,
                    json!({"error": "invalid_phone", "message": "user_phone is too long"}),
                ));
            }
            Fault::EdgeSecretRegisters if path == "/edge/register" => {
                let token = Json::String(self.secrets.registration.clone());
                let edge = Json::String(self.secrets.edge.clone());
                request.edit_json(|body| {
                    if body.get("registration_token") == Some(&edge) {
                        body.insert("registration_token", token);
                    }
                });
            }
            // The control API.
            Fault::AdminApiOpenToEdgeSecret
                if path.starts_with("/api") && request.header("authorization") == Some(&edge) =>
            {
                request.set_header("authorization", &admin)
            }
            Fault::ApiAcceptsAgentTokens if path.starts_with("/api") && hmac.is_some() => {
                request.set_header("authorization", &admin)
            }
            Fault::ApiAcceptsMissingToken
                if path.starts_with("/api") && request.header("authorization").is_none() =>
            {
                request.set_header("authorization", &admin)
            }
            Fault::StatusFilterIgnored
                if request.method() == "GET"
                    && path.starts_with("/api/agents/")
                    && path.contains("/commands?") =>
            {
                let bare = path.split('?').next().unwrap_or("").to_string();
                request.set_path(&bare);
            }
            Fault::ConnectedFilterIgnored
            | Fault::ConnectedListFromLastSeen
            | Fault::ConnectedListHasNeverConnected
                if request.method() == "GET" && path.starts_with("/api/agents?") =>
            {
                request.set_path("/api/agents");
            }
            Fault::SyncRefusesSharedSecret
                if path == "/edge/sync" && request.header("authorization") == Some(&edge) =>
            {
                return Some(Http::answer(
                    401,
                    json!({"error": "unauthorized", "message": "invalid token"}),
                ));
            }
            Fault::CommandPostOpen
                if is_command_post(request) && request.header("authorization") != Some(&admin) =>
            {
                request.set_header("authorization", &admin)
            }
            Fault::PrefixSecretAccepted
                if bearer
                    .as_deref()
                    .is_some_and(|b| is_short_prefix(b, &self.secrets.edge)) =>
            {
                request.set_header("authorization", &edge)
            }
            Fault::PrefixAdminAccepted
                if bearer
                    .as_deref()
                    .is_some_and(|b| is_short_prefix(b, &self.secrets.admin)) =>
            {
                request.set_header("authorization", &admin)
            }
            Fault::PrefixSignatureAccepted => {
                if let Some(whole) = bearer
                    .as_deref()
                    .and_then(|b| signature_completed(b, &self.secrets.edge))
                {
                    request.set_header("authorization", &format!("Bearer {whole}"))
                }
            }
            Fault::AgentIdsCaseInsensitive
                if request.method() == "PUT" && path.starts_with("/api/agents/") =>
            {
                let id = path.trim_start_matches("/api/agents/").to_string();
                self.memory().provisioned.insert(id);
            }
            Fault::AgentIdsCaseInsensitive if socket || path.starts_with("/api/agents/") => {
                let named = match socket {
                    true => agent.clone(),
                    false => path["/api/agents/".len()..]
                        .split(['/', '?'])
                        .next()
                        .unwrap_or("")
                        .to_string(),
                };
                let provisioned = self.memory().provisioned.clone();
                let known = provisioned
                    .iter()
                    .find(|p| p.eq_ignore_ascii_case(&named) && **p != named);
                if let Some(known) = known {
                    request.set_path(&path.replacen(&named, known, 1));
                }
            }
            Fault::ReprovisionDropsQueue
                if request.method() == "PUT" && path.starts_with("/api/agents/") =>
            {
                let id = path.trim_start_matches("/api/agents/").to_string();
                let mut memory = self.memory();
                if !memory.provisioned.insert(id.clone()) {
                    memory.reprovisioned.insert(id);
                }
            }
            Fault::ImmediateIsNormal if is_command_post(request) => {
                request.edit_json(|body| {
                    if body.get("priority") == Some(&Json::String("immediate".into())) {
                        body.insert("priority", Json::String("normal".into()));
                    }
                });
            }
            Fault::DefaultPriorityLow if is_command_post(request) => {
                request.edit_json(|body| {
                    if body.get("priority").is_none() {
                        body.insert("priority", Json::String("low".into()));
                    }
                });
            }
            Fault::OnlySpecCommandTypes if is_command_post(request) => {
                let spec = [
                    "send_message",
                    "schedule_message",
                    "cancel_message",
                    "update_config",
                ];
                let kind = request
                    .json()
                    .map(|b| b["command_type"].clone())
                    .unwrap_or_default();
                if !spec.iter().any(|t| kind == *t) {
                    return Some(Http::answer(
                        400,
                        json!({"error": "invalid_command_type", "message": "unknown command_type"}),
                    ));
                }
            }
            Fault::TtlIgnored if is_command_post(request) => {
                request.edit_json(|body| body.remove("ttl_s"));
            }
            Fault::IgnoresCommandId if is_command_post(request) => {
                request.edit_json(|body| body.remove("command_id"));
            }
            _ => {}
        }
        None
    }

    // ---------------------------------------------------------------
    // HTTP answers, refused upgrades included.
    // ---------------------------------------------------------------

    async fn response(&self, request: &Http, answer: &mut Http) {
        let path = request.path().to_string();
        let route = path.split('?').next().unwrap_or("").to_string();
        let socket = path.starts_with("/edge/ws");
        let status = answer.status();
        let method = request.method().to_string();
        let agent = query_param(&path, "edge_agent_id").unwrap_or_default();
        // What every backend remembers: the commands it accepted, and which
        // of them waited for an offline agent.
        if is_command_post(request) && status == 202 {
            let body = answer.json().unwrap_or_default();
            let id = body["command_id"].as_str().unwrap_or("").to_string();
            if self.fault == Fault::AcceptedBeforeDurable {
                self.memory().accepted_at.insert(id.clone(), Instant::now());
            }
            self.memory().created.insert(id);
            if body["status"] == "queued" {
                let id = body["command_id"].as_str().unwrap_or("").to_string();
                self.memory().queued.insert(id);
            }
        }
        // The command id of `/api/commands/{id}` (and `/retry`).
        let command = route
            .strip_prefix("/api/commands/")
            .map(|rest| rest.trim_end_matches("/retry").to_string());
        match self.fault {
            // Any answer.
            Fault::RateLimitWithoutRetryAfter if status == 429 => {
                answer.remove_header("retry-after")
            }
            Fault::RetryAfterInMilliseconds if status == 429 => {
                let seconds: u64 = answer
                    .header("retry-after")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(60);
                answer.set_header("retry-after", &(seconds * 1000).to_string());
            }
            Fault::RateLimitIs503 if status == 429 => {
                answer.set_status(503);
                answer.remove_header("retry-after");
                answer.set_json(json!({"error": "unavailable", "message": "try later"}));
            }
            Fault::EmptyBodyOn405 if status == 405 => answer.set_body("text/plain", ""),
            Fault::Router404IsText
                if status == 404 && !ROUTES.iter().any(|known| route.starts_with(known)) =>
            {
                answer.set_body("text/html", &format!("Cannot {method} {route}"))
            }
            Fault::ExtractorRejectionIsText if status == 400 && method == "POST" => {
                answer.set_status(422);
                answer.set_body(
                    "text/plain; charset=utf-8",
                    "Failed to deserialize the JSON body into the target type",
                );
            }
            Fault::BigBodyIsText413 if status == 413 => {
                answer.set_body("text/plain; charset=utf-8", "length limit exceeded")
            }
            // Refused upgrades (`/edge/ws` answered without a 101).
            Fault::OnlyUnauthorizedCounted
                if socket
                    && status == 429
                    && !agent
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) =>
            {
                *answer = Http::answer(
                    400,
                    json!({"error": "invalid_agent_id", "message": "edge_agent_id is malformed"}),
                );
            }
            Fault::RefusedUpgradeKicksLive
                if socket
                    && [401, 403].contains(&status)
                    && self.memory().live.get(&agent).is_some_and(|n| *n > 0) =>
            {
                self.crash.send_modify(|n| *n += 1);
            }
            Fault::RefusesWithBare403 if socket && status == 401 => {
                answer.set_status(403);
                answer.set_body("text/plain", "");
            }
            Fault::UnknownAgentIs401 if socket && status == 403 => {
                answer.set_status(401);
                answer.set_json(json!({"error": "unauthorized", "message": "unknown agent"}));
            }
            Fault::UnknownAgentIs404 if socket && status == 403 => {
                answer.set_status(404);
                answer.set_json(json!({"error": "not_found", "message": "unknown agent"}));
            }
            Fault::UnknownAgentErrorForbidden if socket && status == 403 => {
                answer.set_json(json!({"error": "forbidden", "message": "unknown agent"}));
            }
            Fault::RefusalIsHtml if socket && status == 401 => {
                answer.set_body(
                    "text/html",
                    "<html><body><h1>401 Unauthorized</h1></body></html>",
                );
            }
            Fault::InvalidIdIsUnknownAgent
                if socket
                    && answer
                        .json()
                        .is_some_and(|b| b["error"] == "invalid_agent_id") =>
            {
                answer.set_status(403);
                answer.set_json(json!({"error": "unknown_agent", "message": "not registered"}));
            }
            Fault::EmptyIdIsUnknownAgent
                if socket
                    && path.contains("edge_agent_id=")
                    && agent.is_empty()
                    && answer
                        .json()
                        .is_some_and(|b| b["error"] == "missing_agent_id") =>
            {
                answer.set_status(403);
                answer.set_json(json!({"error": "unknown_agent", "message": "not registered"}));
            }
            Fault::AuthBeforeRateLimit if socket && status == 429 && !self.valid_token(request) => {
                answer.set_status(401);
                answer.remove_header("retry-after");
                answer.set_json(json!({"error": "unauthorized", "message": "bad token"}));
            }
            Fault::CountsRejectsPerAgent if socket && status == 401 => {
                *self.memory().rejects.entry(agent).or_default() += 1;
            }
            Fault::LimitNeverResets if socket && status == 429 => {
                self.memory().limited.insert(agent);
            }
            // The edge's HTTP endpoints: sync, acks, registration, errors.
            Fault::StackTraceInErrors if status >= 400 && !socket => {
                if let Some(mut body) = answer.json() {
                    body["stack"] = json!(
                        "TypeError: Cannot read properties of undefined (reading 'length')\n    at validate (/app/src/commands.js:42:17)\n    at /app/node_modules/express/lib/router/layer.js:95:5"
                    );
                    answer.set_json(body);
                }
            }
            Fault::ErrorEchoesHeaders if status == 400 && !socket => {
                if let Some(mut body) = answer.json() {
                    body["request"] = json!({
                        "method": method,
                        "authorization": request.header("authorization").unwrap_or(""),
                    });
                    answer.set_json(body);
                }
            }
            Fault::RegistrationOpenWhenUnconfigured
                if route == "/edge/register"
                    && answer
                        .json()
                        .is_some_and(|b| b["error"] == "registration_disabled") =>
            {
                let phone = request
                    .json()
                    .map(|b| b["user_phone"].clone())
                    .unwrap_or_default();
                let digits: String = phone
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .filter(char::is_ascii_digit)
                    .collect();
                let id = format!("edge_{digits}");
                let Some((200 | 201, agent)) = self
                    .admin(
                        "PUT",
                        &format!("/api/agents/{id}"),
                        &json!({"user_phone": phone}).to_string(),
                    )
                    .await
                else {
                    return;
                };
                answer.set_status(200);
                answer.set_json(agent);
            }
            Fault::RegistrationDisabledIs401
                if route == "/edge/register"
                    && answer
                        .json()
                        .is_some_and(|b| b["error"] == "registration_disabled") =>
            {
                answer.set_status(401);
                answer.set_json(
                    json!({"error": "unauthorized", "message": "wrong registration_token"}),
                );
            }
            Fault::HttpAckWithoutAgentIdAccepted
                if route == "/edge/command/ack"
                    && answer
                        .json()
                        .is_some_and(|b| b["error"] == "missing_agent_id") =>
            {
                answer.set_status(200);
                answer.set_json(json!({"acknowledged": true}));
            }
            Fault::HttpAckUnknownIs200 if route == "/edge/command/ack" && status == 404 => {
                answer.set_status(200);
                answer.set_json(json!({"acknowledged": true}));
            }
            // Every answer's token useless, or only a repeated phone's.
            Fault::RegistrationTokenUseless | Fault::ReregistrationTokenUseless
                if route == "/edge/register" && status == 200 =>
            {
                let phone = request.json().map(|b| b["user_phone"].to_string());
                let repeated = !self.memory().phones.insert(phone.unwrap_or_default());
                if self.fault == Fault::RegistrationTokenUseless || repeated {
                    answer.edit_json(|body| {
                        if let Some(Json::String(token)) = body.get_mut("auth_token") {
                            *token = forge(token);
                        }
                    });
                }
            }
            Fault::HttpAckNoOwnerCheck
                if route == "/edge/command/ack"
                    && status == 404
                    && request.json().is_some_and(|b| {
                        b["command_id"]
                            .as_str()
                            .is_some_and(|id| self.memory().created.contains(id))
                    }) =>
            {
                let id = request.json().unwrap()["command_id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                self.memory().last_ack.insert(id, "completed".into());
                answer.set_status(200);
                answer.set_json(json!({"acknowledged": true}));
            }
            Fault::SyncReturnsInProgress if route == "/edge/sync" && status == 200 => {
                let progress: Vec<String> = self.memory().progress.keys().cloned().collect();
                let Some(mut body) = answer.json() else {
                    return;
                };
                let named = request
                    .json()
                    .and_then(|b| b["edge_agent_id"].as_str().map(str::to_string))
                    .unwrap_or_default();
                for id in progress {
                    if let Some((200, command)) =
                        self.admin("GET", &format!("/api/commands/{id}"), "").await
                    {
                        let working =
                            command["status"] == "received" || command["status"] == "executing";
                        if working && command["edge_agent_id"] == named.as_str() {
                            if let Some(commands) = body["commands"].as_array_mut() {
                                commands.push(command);
                            }
                        }
                    }
                }
                answer.set_json(body);
            }
            Fault::HttpErrorsNotJson if status >= 400 && route.starts_with("/edge/") => {
                answer.set_body("text/plain", "Unauthorized");
            }
            Fault::SyncIgnoresPriority if route == "/edge/sync" => {
                answer.edit_json(|body| {
                    if let Some(Json::Array(commands)) = body.get_mut("commands") {
                        commands.sort_by_key(|c| {
                            c.get("created_at").map(|t| t.to_text()).unwrap_or_default()
                        });
                    }
                });
            }
            Fault::SyncResortsParameterKeys if route == "/edge/sync" => {
                answer.edit_json(|body| {
                    if let Some(Json::Array(commands)) = body.get_mut("commands") {
                        for command in commands {
                            for key in ["parameters", "payload"] {
                                if let Some(value) = command.get_mut(key) {
                                    value.sort_keys();
                                }
                            }
                        }
                    }
                });
            }
            Fault::SyncCommandDataPartial if route == "/edge/sync" => {
                answer.edit_json(|body| {
                    if let Some(Json::Array(commands)) = body.get_mut("commands") {
                        for command in commands {
                            for key in ["command_type", "priority", "created_at", "expires_at"] {
                                command.remove(key);
                            }
                        }
                    }
                });
            }
            Fault::SyncSkipsSocketPushed if route == "/edge/sync" => {
                let pushed: HashSet<String> =
                    self.memory().pushed.values().flatten().cloned().collect();
                answer.edit_json(|body| {
                    if let Some(Json::Array(commands)) = body.get_mut("commands") {
                        commands.retain(|c| {
                            !matches!(c.get("command_id"), Some(Json::String(id)) if pushed.contains(id))
                        });
                    }
                });
            }
            Fault::SyncIntervalNotSent if route == "/edge/sync" => {
                answer.edit_json(|body| body.remove("config_updates"));
            }
            Fault::SyncAcksEventsOnce if route == "/edge/sync" => {
                let mut memory = self.memory();
                answer.edit_json(|body| {
                    if let Some(Json::Array(acked)) = body.get_mut("ack_events") {
                        acked.retain(|e| memory.events.insert(e.to_text()));
                    }
                });
            }
            Fault::SyncAttemptNotCounted if route == "/edge/sync" => {
                answer.edit_json(|body| {
                    if let Some(Json::Array(commands)) = body.get_mut("commands") {
                        for command in commands {
                            command.insert("attempt", Json::from(1));
                        }
                    }
                });
            }
            Fault::SyncNeverRedelivers if route == "/edge/sync" => {
                answer.edit_json(|body| {
                    if let Some(Json::Array(commands)) = body.get_mut("commands") {
                        commands.retain(|c| c.get("attempt").and_then(Json::as_u64) == Some(1));
                    }
                });
            }
            Fault::SyncReturnsSentAgain if route == "/edge/sync" && status == 200 => {
                let Some(mut body) = answer.json() else {
                    return;
                };
                let named = request
                    .json()
                    .and_then(|b| b["edge_agent_id"].as_str().map(str::to_string))
                    .unwrap_or_default();
                let mut memory = self.memory();
                let before = memory.synced.entry(named).or_default();
                let Some(commands) = body["commands"].as_array_mut() else {
                    return;
                };
                for old in before.iter() {
                    if !commands
                        .iter()
                        .any(|c| c["command_id"] == old["command_id"])
                    {
                        commands.push(old.clone());
                    }
                }
                *before = commands.clone();
                answer.set_json(body);
            }
            // The control API and `/metrics`.
            Fault::ApiErrorsWithoutMessage if route.starts_with("/api/") && status >= 400 => {
                answer.edit_json(|body| body.remove("message"));
            }
            Fault::PendingIgnoresProgress
                if method == "GET" && route.starts_with("/api/agents/") && status == 200 =>
            {
                let id = route.trim_start_matches("/api/agents/");
                let memory = self.memory();
                let working = memory.pushed.get(id).map_or(0, |pushed| {
                    pushed
                        .iter()
                        .filter(|c| memory.progress.contains_key(*c))
                        .count()
                });
                drop(memory);
                answer.edit_json(|body| {
                    if let Some(n) = body.get("pending_commands").and_then(Json::as_u64) {
                        body.insert(
                            "pending_commands",
                            Json::from(n.saturating_sub(working as u64)),
                        );
                    }
                });
            }
            Fault::RetryFinalCommands if route.ends_with("/retry") && status == 409 => {
                let id = command.clone().unwrap_or_default();
                let Some((200, mut existing)) =
                    self.admin("GET", &format!("/api/commands/{id}"), "").await
                else {
                    return;
                };
                if existing["status"] == "completed" || existing["status"] == "failed" {
                    existing["status"] = json!("queued");
                    existing["attempts"] = json!(0);
                    answer.set_status(202);
                    answer.set_json(existing);
                }
            }
            Fault::RetryAnyState if route.ends_with("/retry") && status == 409 => {
                let id = command.clone().unwrap_or_default();
                let Some((200, existing)) =
                    self.admin("GET", &format!("/api/commands/{id}"), "").await
                else {
                    return;
                };
                answer.set_status(202);
                answer.set_json(existing);
            }
            // Once an agent's queue was full: its repeats (200), or its new
            // commands (202), are refused too.
            Fault::RepeatedIdAtLimitIs429 | Fault::QueueFullCountsFinished
                if is_command_post(request) =>
            {
                let agent = route
                    .trim_start_matches("/api/agents/")
                    .trim_end_matches("/commands")
                    .to_string();
                let refused = match self.fault {
                    Fault::RepeatedIdAtLimitIs429 => 200,
                    _ => 202,
                };
                let mut memory = self.memory();
                if status == 429 {
                    memory.full.insert(agent);
                } else if status == refused && memory.full.contains(&agent) {
                    answer.set_status(429);
                    answer.set_json(
                        json!({"error": "queue_full", "message": "too many pending commands"}),
                    );
                }
            }
            Fault::StatusMerged if method == "GET" && route.starts_with("/api/agents/") => {
                let id = route.trim_start_matches("/api/agents/");
                let Some(merged) = self.memory().statuses.get(id).cloned() else {
                    return;
                };
                answer.edit_json(|body| body.insert("last_status", Json::Object(merged)));
            }
            Fault::ConfigDeliveredWhenOffline if route.ends_with("/config") && status == 202 => {
                answer.set_json(json!({"delivered": true}));
            }
            Fault::TimedOutAgentStaysRegistered
                if method == "GET" && route.starts_with("/api/agents/") =>
            {
                let id = route.trim_start_matches("/api/agents/");
                if self.memory().timed_out.contains(id) {
                    answer.edit_json(|body| body.insert("connected", Json::Bool(true)));
                }
            }
            Fault::QueueFullEvictsOldest if is_command_post(request) && status == 429 => {
                let agent = route
                    .trim_start_matches("/api/agents/")
                    .trim_end_matches("/commands");
                // Once: the next POST gets the server's 429.
                if !self.memory().evict.insert(agent.to_string()) {
                    return;
                }
                let id = request.json().map(|b| b["command_id"].clone());
                answer.set_status(202);
                answer.set_json(json!({"command_id": id, "status": "queued"}));
            }
            Fault::TtlLostOnRestart if is_command_post(request) && status == 202 => {
                let ttl = request.json().is_some_and(|b| b.get("ttl_s").is_some());
                let id = answer.json().map(|b| b["command_id"].clone());
                if let (true, Some(Value::String(id))) = (ttl, id) {
                    self.memory().with_ttl.insert(id);
                }
            }
            Fault::TtlLostOnRestart
                if method == "GET"
                    && status == 200
                    && (command.as_ref())
                        .is_some_and(|id| self.memory().ttl_forgotten.contains(id)) =>
            {
                answer.edit_json(|body| {
                    if body.get("status") == Some(&Json::String("expired".into())) {
                        body.insert("status", Json::String("queued".into()));
                    }
                });
            }
            Fault::SyncedNotPushedOnConnect if route == "/edge/sync" && status == 200 => {
                let body = answer.json().unwrap_or_default();
                let ids = body["commands"].as_array().cloned().unwrap_or_default();
                let mut memory = self.memory();
                for command in ids {
                    if let Some(id) = command["command_id"].as_str() {
                        memory.via_sync.insert(id.to_string());
                    }
                }
            }
            Fault::RetryNotPushedLive if route.ends_with("/retry") && status == 202 => {
                let id = command.unwrap_or_default();
                self.memory().retried_at.insert(id, Instant::now());
            }
            Fault::UnknownAgentCommandAccepted if is_command_post(request) && status == 404 => {
                let id = request.json().map(|b| b["command_id"].clone());
                answer.set_status(202);
                answer.set_json(json!({"command_id": id, "status": "queued"}));
            }
            Fault::RepeatedIdRequeues if is_command_post(request) && status == 200 => {
                let id = request.json().map(|b| b["command_id"].clone());
                if let Some(Value::String(id)) = id {
                    self.memory().replay.insert(id);
                }
            }
            Fault::QueueFullIs503 if is_command_post(request) && status == 429 => {
                answer.set_status(503);
                answer.set_json(json!({"error": "unavailable", "message": "queue full"}));
            }
            Fault::MetricsAsJson if route == "/metrics" => {
                let text = String::from_utf8_lossy(&answer.body).to_string();
                let metrics: serde_json::Map<String, Value> = text
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .filter_map(|l| l.rsplit_once(' '))
                    .map(|(name, value)| (name.to_string(), json!(value)))
                    .collect();
                answer.set_json(Value::Object(metrics));
            }
            Fault::MetricsWithoutReconnects if route == "/metrics" => edit_lines(answer, |line| {
                (!line.contains("reconnect")).then(|| line.into())
            }),
            Fault::MetricsNeverMove if route == "/metrics" => zero_samples(answer, |_| true),
            Fault::AcksNotCounted if route == "/metrics" => {
                zero_samples(answer, |sample| sample.starts_with("edge_acks"))
            }
            Fault::ReplacedCountedAsNormal if route == "/metrics" => {
                zero_samples(answer, |sample| sample.contains("reason=\"replaced\""))
            }
            Fault::FailedCountedAsCompleted if route == "/metrics" => {
                zero_samples(answer, |sample| sample.contains("outcome=\"failed\""))
            }
            Fault::FailedAcksUncounted if route == "/metrics" => {
                zero_samples(answer, |sample| sample.contains("result=\"failed\""))
            }
            Fault::HttpDeliveriesCountedAsWs if route == "/metrics" => {
                zero_samples(answer, |sample| sample.contains("channel=\"http\""))
            }
            Fault::TimestampsWithoutZone | Fault::LocalTimeMarkedZ => {
                answer.edit_json(|body| body.edit_strings(&|text| misdate(self.fault, text)));
            }
            Fault::RepeatedAckCountedTwice if route == "/metrics" => {
                let extra = self.memory().repeated_final_acks as f64;
                edit_lines(answer, |line| {
                    Some(match line.rsplit_once(' ') {
                        Some((sample @ "edge_commands_total{outcome=\"completed\"}", n)) => {
                            format!("{sample} {}", n.parse::<f64>().unwrap_or(0.0) + extra)
                        }
                        _ => line.to_string(),
                    })
                })
            }
            Fault::SkipsSentState
            | Fault::ProgressStateNotShown
            | Fault::ProgressStateResetOnReconnect
            | Fault::ProgressCommandGoesDead
            | Fault::ProgressStateNeverExpires
            | Fault::OneAttemptTooMany
            | Fault::DeadNeverMarked
            | Fault::LastAttemptStrandedOnClose
                if method == "GET" && command.is_some() && status == 200 =>
            {
                let Some(body) = answer.json() else {
                    return;
                };
                let id = command.unwrap();
                let state = body["status"].as_str().unwrap_or("").to_string();
                let progress = state == "received" || state == "executing";
                let memory = self.memory();
                let shown = match self.fault {
                    Fault::SkipsSentState if state == "sent" => "queued".to_string(),
                    Fault::ProgressStateNotShown if progress => "sent".to_string(),
                    Fault::ProgressStateResetOnReconnect
                        if progress && memory.repushed.contains(&id) =>
                    {
                        "sent".to_string()
                    }
                    Fault::ProgressCommandGoesDead
                        if progress && body["attempts"].as_u64() >= Some(memory.max_attempts) =>
                    {
                        "dead".to_string()
                    }
                    Fault::ProgressStateNeverExpires if state == "expired" => {
                        let Some(progress) = memory.progress.get(&id) else {
                            return;
                        };
                        progress.clone()
                    }
                    Fault::OneAttemptTooMany
                        if state == "dead"
                            && memory
                                .extra_until
                                .get(&id)
                                .is_some_and(|t| Instant::now() < *t) =>
                    {
                        "sent".to_string()
                    }
                    Fault::DeadNeverMarked if state == "dead" => "sent".to_string(),
                    Fault::LastAttemptStrandedOnClose
                        if state == "dead" && memory.stranded_on_close.contains(&id) =>
                    {
                        "sent".to_string()
                    }
                    _ => return,
                };
                drop(memory);
                answer.edit_json(|body| body.insert("status", Json::String(shown)));
            }
            Fault::ResortsStatusKeys if method == "GET" && route.starts_with("/api/agents/") => {
                answer.edit_json(|body| {
                    if let Some(status) = body.get_mut("last_status") {
                        status.sort_keys();
                    }
                });
            }
            Fault::AttemptsSpentOffline
                if method == "GET" && command.is_some() && status == 200 =>
            {
                let id = command.as_ref().unwrap();
                if self.away_long(id, true) {
                    answer.edit_json(|body| {
                        let spent = body.get("attempts").and_then(Json::as_u64).unwrap_or(0);
                        body.insert("attempts", Json::from(spent + 1));
                    });
                }
            }
            Fault::GhostConnectionAfterCrash
                if method == "GET" && route.starts_with("/api/agents/") && status == 200 =>
            {
                let id = route.trim_start_matches("/api/agents/");
                if self.memory().ghosts.contains(id) {
                    answer.edit_json(|body| body.insert("connected", Json::Bool(true)));
                }
            }
            Fault::ReplacedCleanupUnregistersNew
                if method == "GET" && route.starts_with("/api/agents/") =>
            {
                let id = route.trim_start_matches("/api/agents/");
                if self.memory().unregistered.contains(id) {
                    answer.edit_json(|body| body.insert("connected", Json::Bool(false)));
                }
            }
            Fault::LastAckWins
            | Fault::FailedNotFinal
            | Fault::ForeignAckAccepted
            | Fault::HttpAckNoOwnerCheck
            | Fault::HttpLastAckWins
                if method == "GET" && command.is_some() && status == 200 =>
            {
                let Some(late) = self
                    .memory()
                    .last_ack
                    .get(command.as_ref().unwrap())
                    .cloned()
                else {
                    return;
                };
                answer.edit_json(|body| body.insert("status", Json::String(late)));
            }
            Fault::StaleCommandState if method == "GET" && command.is_some() && status == 200 => {
                let Some(fresh) = answer.json() else {
                    return;
                };
                let now = Instant::now();
                let mut memory = self.memory();
                let (shown, newer) = memory
                    .shown
                    .entry(command.unwrap())
                    .or_insert_with(|| (fresh.clone(), None));
                if fresh["status"] == shown["status"] {
                    *newer = None;
                    return;
                }
                match newer {
                    Some((_, since)) if now - *since >= Duration::from_millis(300) => {
                        *shown = fresh;
                        *newer = None;
                        return;
                    }
                    Some(_) => {}
                    None => *newer = Some((fresh, now)),
                }
                answer.set_json(shown.clone());
            }
            Fault::ConflictLeaksOtherAgentsCommand if status == 409 && is_command_post(request) => {
                let id = request
                    .json()
                    .and_then(|b| b["command_id"].as_str().map(str::to_string));
                let Some((200, existing)) = self
                    .admin(
                        "GET",
                        &format!("/api/commands/{}", id.unwrap_or_default()),
                        "",
                    )
                    .await
                else {
                    return;
                };
                answer.set_status(200);
                answer.set_json(existing);
            }
            Fault::ConnectedListFromLastSeen
                if method == "GET" && route == "/api/agents" && status == 200 =>
            {
                if let Some(Value::Array(agents)) = answer.json() {
                    let seen = agents.into_iter().filter(|a| !a["last_seen"].is_null());
                    answer.set_json(Value::Array(seen.collect()));
                }
            }
            Fault::RepeatAnswerMadeUp if is_command_post(request) && status == 200 => {
                let id = answer.json().unwrap_or_default()["command_id"].clone();
                answer.set_json(json!({"command_id": id, "status": "queued"}));
            }
            Fault::RetryUnknownIs409 if route.ends_with("/retry") && status == 404 => {
                answer.set_status(409);
                answer
                    .set_json(json!({"error": "not_retryable", "message": "not dead or expired"}));
            }
            Fault::UnknownAgentListEmpty
                if method == "GET" && route.ends_with("/commands") && status == 404 =>
            {
                answer.set_status(200);
                answer.set_json(json!([]));
            }
            Fault::UnknownAgentConfigAccepted if route.ends_with("/config") && status == 404 => {
                answer.set_status(202);
                answer.set_json(json!({"delivered": false}));
            }
            Fault::ExpiredCountedPending
                if is_command_post(request)
                    && status == 202
                    && request.json().is_some_and(|b| !b["ttl_s"].is_null()) =>
            {
                let agent = route.split('/').nth(3).unwrap_or("").to_string();
                *self.memory().ttl_posts.entry(agent).or_default() += 1;
            }
            Fault::ExpiredCountedPending
                if method == "GET" && route.starts_with("/api/agents/") && status == 200 =>
            {
                let agent = route.trim_start_matches("/api/agents/");
                let extra = self.memory().ttl_posts.get(agent).copied().unwrap_or(0);
                if let Some(mut body) = answer.json().filter(|b| b["pending_commands"].is_u64()) {
                    let pending = body["pending_commands"].as_u64().unwrap_or(0);
                    body["pending_commands"] = json!(pending + extra);
                    answer.set_json(body);
                }
            }
            Fault::ImmediateRelayedAsIs
                if is_command_post(request)
                    && status == 202
                    && request.json().is_some_and(|b| b["priority"] == "immediate") =>
            {
                let body = answer.json().unwrap_or_default();
                let id = body["command_id"].as_str().unwrap_or("").to_string();
                self.memory().immediate.insert(id);
            }
            Fault::ConnectedListHasNeverConnected
                if method == "GET" && route == "/api/agents" && status == 200 =>
            {
                if let Some(Value::Array(agents)) = answer.json() {
                    let not_gone = agents
                        .into_iter()
                        .filter(|a| a["connected"] == true || a["last_seen"].is_null());
                    answer.set_json(Value::Array(not_gone.collect()));
                }
            }
            Fault::FinalStatesNotListed
                if route.ends_with("/commands")
                    && (path.contains("status=dead") || path.contains("status=expired")) =>
            {
                answer.set_json(json!([]));
            }
            Fault::FinalAckRestamps if method == "GET" && status == 200 => {
                let at = command.and_then(|id| self.memory().restamped.get(&id).cloned());
                if let Some(at) = at {
                    answer.edit_json(|body| body.insert("completed_at", Json::String(at)));
                }
            }
            Fault::RetryKeepsTtl if route.ends_with("/retry") && status == 202 => {
                self.memory().retried.insert(command.unwrap_or_default());
            }
            Fault::RetryKeepsAttempts if route.ends_with("/retry") && status == 202 => {
                let id = command.unwrap_or_default();
                let used = self.memory().attempts.get(&id).copied().unwrap_or(0);
                self.memory().retried.insert(id);
                answer.edit_json(|body| body.insert("attempts", Json::from(used)));
            }
            Fault::CloseNotRemovedAtOnce
                if method == "GET" && route.starts_with("/api/agents/") =>
            {
                let id = route.trim_start_matches("/api/agents/");
                let recent = self
                    .memory()
                    .closed_at
                    .get(id)
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(5));
                if !recent {
                    return;
                }
                answer.edit_json(|body| body.insert("connected", Json::Bool(true)));
            }
            Fault::HistoryWithoutRemoteAddr
                if method == "GET" && route.starts_with("/api/agents/") =>
            {
                answer.edit_json(|body| {
                    if let Some(Json::Array(history)) = body.get_mut("history") {
                        for entry in history {
                            entry.remove("remote_addr");
                        }
                    }
                });
            }
            Fault::NormalCloseRecordedAsError | Fault::PingTimeoutRecordedAsNormal
                if method == "GET" && route.starts_with("/api/agents/") =>
            {
                let (from, to) = match self.fault {
                    Fault::NormalCloseRecordedAsError => ("normal", "error"),
                    _ => ("ping_timeout", "normal"),
                };
                answer.edit_json(|body| {
                    if let Some(Json::Array(history)) = body.get_mut("history") {
                        for entry in history {
                            if entry.get("reason") == Some(&Json::String(from.into())) {
                                entry.insert("reason", Json::String(to.into()));
                            }
                        }
                    }
                });
            }
            Fault::HistoryWithoutDisconnects
                if method == "GET" && route.starts_with("/api/agents/") =>
            {
                answer.edit_json(|body| {
                    if let Some(Json::Array(history)) = body.get_mut("history") {
                        for entry in history {
                            entry.remove("disconnected_at");
                        }
                    }
                });
            }
            _ => {}
        }
    }

    // ---------------------------------------------------------------
    // The WebSocket: both directions, with the per-socket timers.
    // ---------------------------------------------------------------

    async fn pump(
        &self,
        agent: String,
        mut client: WebSocketStream<TcpStream>,
        mut server: WebSocketStream<TcpStream>,
    ) {
        let now = Instant::now();
        let mut s = Session {
            agent,
            ip: client.get_ref().peer_addr().ok().map(|a| a.ip()),
            last_frame: now,
            last_ping: now,
            last_type: String::new(),
            untyped: false,
            opened: now,
            messages: 0,
            pings: 0,
            rate_limited: false,
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(60),
            ack_timeout: Duration::from_secs(30),
            max_attempts: 10,
            acked: HashSet::new(),
            seen: HashSet::new(),
            ignored: VecDeque::new(),
        };
        let mut crash = self.crash.subscribe();
        // (when, what, sent even if acked meanwhile)
        let mut later: Vec<(Instant, Message, bool)> = Vec::new();
        let mut held: Vec<Json> = Vec::new();
        let mut release = now;
        let mut deaf = false;
        // The agent's reader fails for good after a broken frame (it is fused).
        let mut agent_broken = false;
        let far = now + Duration::from_secs(3600);
        loop {
            let due = later.first().map(|(t, ..)| *t);
            let idle = self.idle_deadline(&s);
            let acts = tokio::select! {
                _ = sleep_until(due.unwrap_or(far)), if due.is_some() => {
                    let (_, message, anyway) = later.remove(0);
                    let acked = !anyway && json(&message).is_some_and(|v| {
                        v["data"]["command_id"].as_str().is_some_and(|id| s.acked.contains(id))
                    });
                    match message {
                        // A delayed delivery of a command acked meanwhile is not sent.
                        _ if acked => vec![],
                        Message::Close(_) => vec![Act::Agent(message), Act::Drop],
                        _ => vec![Act::Agent(message)],
                    }
                }
                _ = sleep_until(release), if !held.is_empty() => {
                    let mut commands = std::mem::take(&mut held);
                    self.connect_order(&mut commands);
                    commands.into_iter().map(|c| Act::Agent(Message::text(c.to_text()))).collect()
                }
                _ = sleep_until(idle.unwrap_or(far)), if idle.is_some() => {
                    vec![Act::Close(4008, "ping timeout")]
                }
                _ = crash.changed() => vec![Act::Close(1011, "internal error")],
                from_client = client.next(), if !agent_broken => match from_client {
                    Some(Ok(message)) => {
                        s.last_frame = Instant::now();
                        self.agent_frame(&mut s, message)
                    }
                    // A broken frame the proxy's own reader refuses: the
                    // server gets the same, and answers for itself.
                    Some(Err(WsError::Utf8(_))) => {
                        agent_broken = true;
                        let bytes = vec![b'{', 0xff, 0xfe, b'}'];
                        let frame = Frame::message(bytes, OpCode::Data(Data::Text), true);
                        vec![Act::Server(Message::Frame(frame))]
                    }
                    Some(Err(WsError::Protocol(_))) => {
                        agent_broken = true;
                        let _ = server.get_mut().write_all(&reserved_opcode_frame()).await;
                        continue;
                    }
                    _ => {
                        let _ = server.close(None).await;
                        return;
                    }
                },
                from_server = server.next(), if !deaf => match from_server {
                    Some(Ok(message)) => self.server_frame(&mut s, message),
                    _ => {
                        let _ = client.close(None).await;
                        return;
                    }
                },
            };
            for act in acts {
                let sent = match act {
                    Act::Server(message) => server.send(message).await.is_ok(),
                    Act::Agent(message) => client.send(message).await.is_ok(),
                    Act::AgentAt(at, message) => {
                        let at = at.max(later.last().map_or(at, |(t, ..)| *t));
                        later.push((at, message, false));
                        true
                    }
                    Act::ReplayAt(at, message) => {
                        let at = at.max(later.last().map_or(at, |(t, ..)| *t));
                        later.push((at, message, true));
                        true
                    }
                    Act::Hold(command) => {
                        held.push(command);
                        release = Instant::now() + HOLD;
                        true
                    }
                    Act::Close(code, reason) => {
                        let frame = CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.into(),
                        };
                        let _ = client.send(Message::Close(Some(frame))).await;
                        let _ = server.close(None).await;
                        false
                    }
                    Act::Deafen => {
                        deaf = true;
                        true
                    }
                    Act::Drop => false,
                    Act::StoreStatus(status) => {
                        let body = json!({"edge_agent_id": s.agent, "status": status});
                        let edge = &self.secrets.edge;
                        let _ = self
                            .call(edge, "POST", "/edge/sync", &body.to_string())
                            .await;
                        true
                    }
                };
                if !sent {
                    return;
                }
            }
        }
    }

    /// When the proxy itself closes a quiet agent (faults with their own ping timeout).
    fn idle_deadline(&self, s: &Session) -> Option<Instant> {
        match self.fault {
            Fault::OnlyPingMessagesCount => Some(s.last_ping + s.ping_timeout),
            Fault::TimesOutAtPingInterval => Some(s.last_frame + s.ping_interval),
            _ => None,
        }
    }

    /// AttemptsSpentOffline: whether the agent of a command pushed before
    /// was away long enough for a timer to spend an attempt (2 s: the
    /// embedded ack_timeout plus backoff(1)), and, with `still`, still is.
    fn away_long(&self, id: &str, still: bool) -> bool {
        let memory = self.memory();
        let Some((agent, _)) = memory.frames.get(id) else {
            return false;
        };
        let gone = memory.live.get(agent).is_none_or(|n| *n == 0);
        let long =
            (memory.closed_at.get(agent)).is_some_and(|at| at.elapsed() > Duration::from_secs(2));
        long && (gone || !still)
    }

    /// The order a fault pushes pending commands in at connect.
    fn connect_order(&self, commands: &mut [Json]) {
        let field = |c: &Json, name: &str| {
            c.get("data")
                .and_then(|d| d.get(name))
                .map(|v| v.to_text())
                .unwrap_or_default()
        };
        let rank = |c: &Json| match field(c, "priority").as_str() {
            "\"high\"" => 0,
            "\"normal\"" => 1,
            _ => 2,
        };
        match self.fault {
            Fault::WrongPriorityOrder => commands.reverse(),
            Fault::IgnoresPriority => commands.sort_by_key(|c| field(c, "created_at")),
            Fault::PrioritySortedByName => commands.sort_by_key(|c| field(c, "priority")),
            Fault::LifoWithinPriority => {
                commands.sort_by_key(|c| (rank(c), std::cmp::Reverse(field(c, "created_at"))))
            }
            Fault::SentFirstAtConnect => commands.sort_by_key(|c| field(c, "attempt") == "1"),
            _ => {}
        }
    }

    // ---------------------------------------------------------------
    // Agent → server frames.
    // ---------------------------------------------------------------

    fn agent_frame(&self, s: &mut Session, message: Message) -> Vec<Act> {
        let value = json(&message);
        let kind = value
            .as_ref()
            .and_then(|v| v["type"].as_str())
            .unwrap_or("")
            .to_string();
        if !kind.is_empty() {
            s.last_type = kind.clone();
        }
        s.untyped = value.is_some() && kind.is_empty();
        let counted = match message {
            Message::Text(_) | Message::Binary(_) => true,
            Message::Ping(_) => self.fault == Fault::ControlFramesCounted,
            _ => false,
        };
        if counted {
            s.messages += 1;
            // Past the spec's 100 a minute (RateLimitStopsDelivery's memory).
            s.rate_limited |= s.messages > 100;
        }
        if kind == "ping" {
            s.last_ping = Instant::now();
            s.pings += 1;
        }
        let ack = (kind == "command_ack").then(|| value.clone().unwrap()["data"].clone());
        if let Some(ack) = &ack {
            let id = ack["command_id"].as_str().unwrap_or("").to_string();
            let status = match (&ack["success"], ack["status"].as_str()) {
                (Value::Bool(true), _) => "completed".to_string(),
                (Value::Bool(false), _) => "failed".to_string(),
                (_, Some(status)) => status.to_string(),
                _ => String::new(),
            };
            // `progress` holds the commands in a progress state now.
            if status == "received" || status == "executing" {
                self.memory().progress.insert(id.clone(), status.clone());
            } else if !status.is_empty() {
                self.memory().progress.remove(&id);
            }
            if !status.is_empty() {
                s.acked.insert(id.clone());
                if self.fault == Fault::RepeatedAckCountedTwice
                    && (status == "completed" || status == "failed")
                {
                    let mut memory = self.memory();
                    if !memory.final_acked.insert(id.clone()) {
                        memory.repeated_final_acks += 1;
                    }
                }
                if self.fault == Fault::FinalAckRestamps && status == "completed" {
                    let mut memory = self.memory();
                    if !memory.final_acked.insert(id.clone()) {
                        let now = humantime::format_rfc3339_millis(SystemTime::now());
                        memory.restamped.insert(id.clone(), now.to_string());
                    }
                }
                if self.fault == Fault::FailedRepushedOnReconnect && status == "failed" {
                    self.memory().replay.insert(id.clone());
                }
                if self.fault == Fault::FailedNotFinal {
                    let mut memory = self.memory();
                    if status == "failed" || memory.last_ack.contains_key(&id) {
                        memory.last_ack.insert(id.clone(), status.clone());
                    }
                }
                if self.fault == Fault::LastAckWins {
                    self.memory().last_ack.insert(id, status);
                }
            }
        }
        let not_json = matches!(message, Message::Text(_)) && value.is_none();
        let progress = ack
            .as_ref()
            .is_some_and(|a| a["status"] == "received" || a["status"] == "executing");
        match self.fault {
            Fault::CrashesOnBadJson if not_json => return vec![Act::Close(1011, "internal error")],
            Fault::BadInputKillsAllSockets if not_json => {
                self.crash.send_modify(|n| *n += 1);
                return vec![];
            }
            Fault::BinaryClosesSocket if matches!(message, Message::Binary(_)) => {
                return vec![Act::Close(1003, "unsupported data")]
            }
            Fault::IgnoresAcks if ack.is_some() => return vec![],
            Fault::FrameLimit16KiB if matches!(&message, Message::Text(text) if text.len() > 16 * 1024) => {
                return vec![Act::Close(1009, "message too big")]
            }
            Fault::AckDataNotObjectCrashes
                if ack.as_ref().is_some_and(|a| {
                    !a.is_object() || a.get("command_id").is_some_and(|c| !c.is_string())
                }) =>
            {
                return vec![Act::Close(1011, "internal error")]
            }
            Fault::AckNeedsTimestamp
                if ack.as_ref().is_some_and(|a| a.get("timestamp").is_none()) =>
            {
                return vec![error_to_agent("invalid_message", "timestamp is required")];
            }
            Fault::LastAttemptAckIgnored
                if ack.as_ref().is_some_and(|a| {
                    let memory = self.memory();
                    let id = a["command_id"].as_str().unwrap_or("");
                    memory.attempts.get(id) == Some(&memory.max_attempts)
                }) =>
            {
                return vec![];
            }
            Fault::FinalAckLeavesTimer
                if ack.as_ref().is_some_and(|a| {
                    a["status"] == "completed" || a["status"] == "failed" || a["success"] == false
                }) =>
            {
                let id = ack.as_ref().unwrap()["command_id"].as_str().unwrap_or("");
                let Some((_, frame)) = self.memory().frames.get(id).cloned() else {
                    return vec![Act::Server(message)];
                };
                let mut again = Json::parse(&frame).unwrap();
                again
                    .get_mut("data")
                    .unwrap()
                    .insert("attempt", Json::from(2));
                let at = Instant::now() + s.ack_timeout + Duration::from_secs(1);
                return vec![
                    Act::Server(message),
                    Act::ReplayAt(at, Message::text(again.to_text())),
                ];
            }
            Fault::PingLimitPerAddress if kind == "ping" => {
                let mut memory = self.memory();
                let last = memory.pinged_from.get(&s.ip);
                if last.is_some_and(|at| at.elapsed() < Duration::from_secs(10)) {
                    return vec![error_to_agent("rate_limited", "too many pings")];
                }
                memory.pinged_from.insert(s.ip, Instant::now());
            }
            Fault::NullErrorRefused
                if ack
                    .as_ref()
                    .is_some_and(|a| a.get("error").is_some_and(Value::is_null)) =>
            {
                return vec![error_to_agent(
                    "invalid_message",
                    "error: expected string, received null",
                )];
            }
            Fault::ExtraMessagesProcessed if counted && s.messages > 100 => {
                let data = value
                    .filter(|_| kind == "status")
                    .map(|v| v["data"].clone());
                s.ignored.push_back(data.unwrap_or_default());
            }
            Fault::ControlFramesCounted
                if s.messages > 100 && matches!(message, Message::Text(_)) =>
            {
                return vec![error_to_agent("rate_limited", "too many messages")];
            }
            Fault::BinaryNotCounted if matches!(message, Message::Binary(_)) => {
                return vec![error_to_agent(
                    "unsupported_frame",
                    "binary frames are not supported",
                )];
            }
            Fault::CompatAckIgnored if ack.as_ref().is_some_and(|a| a.get("success").is_none()) => {
                return vec![]
            }
            Fault::ProgressAckIgnored if progress => return vec![],
            Fault::StatusNotStored if kind == "status" => return vec![],
            Fault::StatusFirstOnly
                if kind == "status" && !self.memory().status_seen.insert(s.agent.clone()) =>
            {
                return vec![]
            }
            Fault::StatusMerged if kind == "status" => {
                if let Some(Json::Object(members)) =
                    Json::parse(&message).and_then(|m| m.get("data").cloned())
                {
                    let mut memory = self.memory();
                    let merged = memory.statuses.entry(s.agent.clone()).or_default();
                    for (key, value) in members {
                        match merged.iter_mut().find(|(k, _)| *k == key) {
                            Some(slot) => slot.1 = value,
                            None => merged.push((key, value)),
                        }
                    }
                }
            }
            Fault::WsPingsNotCounted if matches!(message, Message::Ping(_)) => return vec![],
            // Sent at once, this replaces the Pong the proxy's own WebSocket
            // library queued for the agent; the server's is dropped below.
            Fault::PongLosesPayload if matches!(message, Message::Ping(_)) => {
                return vec![
                    Act::Agent(Message::Pong(Vec::new().into())),
                    Act::Server(message),
                ]
            }
            Fault::FailureAckCompletes | Fault::AckErrorDropped | Fault::ProgressAckCompletes
                if ack.is_some() =>
            {
                let mut frame = Json::parse(&message).unwrap();
                let data = frame.get_mut("data").unwrap();
                match self.fault {
                    Fault::FailureAckCompletes
                        if data.get("success") == Some(&Json::Bool(false)) =>
                    {
                        data.insert("success", Json::Bool(true))
                    }
                    Fault::AckErrorDropped => data.remove("error"),
                    Fault::ProgressAckCompletes if progress => {
                        data.insert("status", Json::String("completed".into()))
                    }
                    _ => {}
                }
                return vec![Act::Server(Message::text(frame.to_text()))];
            }
            _ => {}
        }
        vec![Act::Server(message)]
    }

    // ---------------------------------------------------------------
    // Server → agent frames.
    // ---------------------------------------------------------------

    fn server_frame(&self, s: &mut Session, message: Message) -> Vec<Act> {
        if let Message::Close(Some(frame)) = &message {
            let code = u16::from(frame.code);
            let replace = |code: u16, reason: &str| {
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.to_string().into(),
                };
                vec![Act::Agent(Message::Close(Some(frame)))]
            };
            return match (self.fault, code) {
                // The agent's socket stays up; nothing reaches it any more.
                (Fault::KeepsOldSocket, 4000) | (Fault::NeverTimesOut, 4008) => vec![Act::Deafen],
                (Fault::TimesOutTooLate, 4008) => vec![
                    Act::Deafen,
                    Act::AgentAt(Instant::now() + s.ping_timeout, message.clone()),
                ],
                (Fault::ReplacedClosesWith1000, 4000) => replace(1000, ""),
                (Fault::TimedOutAgentStaysRegistered, 4008) => {
                    self.memory().timed_out.insert(s.agent.clone());
                    vec![Act::Agent(message)]
                }
                (Fault::ReplacedCleanupUnregistersNew, 4000) => {
                    self.memory().unregistered.insert(s.agent.clone());
                    vec![Act::Agent(message)]
                }
                (Fault::ShutdownDropsSockets, 1012) | (Fault::ProtocolErrorNoCloseFrame, 1002) => {
                    vec![Act::Drop]
                }
                (Fault::InFlightLostOnRestart, 1012) => {
                    let mut memory = self.memory();
                    let pushed = memory.pushed.get(&s.agent).cloned().unwrap_or_default();
                    memory.lost.extend(pushed.difference(&s.acked).cloned());
                    vec![Act::Agent(message)]
                }
                (Fault::PingTimeoutCloses1001, 4008) => replace(1001, "going away"),
                (Fault::ShutdownCloses1001, 1012) => replace(1001, "going away"),
                (Fault::OversizeCloses1011, 1009) => replace(1011, "internal error"),
                (Fault::BadUtf8Closes1002, 1007) => replace(1002, "protocol error"),
                _ => vec![Act::Agent(message)],
            };
        }
        if self.fault == Fault::PongLosesPayload && matches!(message, Message::Pong(_)) {
            return vec![];
        }
        let Some(value) = json(&message) else {
            return vec![Act::Agent(message)];
        };
        let kind = value["type"].as_str().unwrap_or("").to_string();
        let data = &value["data"];
        let code = data["code"].as_str().unwrap_or("").to_string();
        let id = data["command_id"].as_str().unwrap_or("").to_string();
        let attempt = data["attempt"].as_u64().unwrap_or(1);
        if kind == "connected" {
            // Milliseconds when given (the `_s` values are whole seconds).
            let timer = |name: &str| {
                data[format!("{name}_ms")]
                    .as_u64()
                    .map(Duration::from_millis)
                    .or_else(|| {
                        data[format!("{name}_s")]
                            .as_f64()
                            .map(Duration::from_secs_f64)
                    })
            };
            s.ping_interval = timer("ping_interval").unwrap_or(s.ping_interval);
            s.ping_timeout = timer("ping_timeout").unwrap_or(s.ping_timeout);
            s.ack_timeout = timer("ack_timeout").unwrap_or(s.ack_timeout);
            s.max_attempts = data["max_attempts"].as_u64().unwrap_or(s.max_attempts);
            self.memory().max_attempts = s.max_attempts;
        }
        if kind == "error" && code == "rate_limited" {
            s.rate_limited = true;
        }
        // A command pushed again on a new socket (WS-DLV-4), and one that
        // was pending when this socket opened: queued or pushed before.
        let (mut repush, mut at_connect) = (false, false);
        if kind == "command" {
            let mut memory = self.memory();
            if !memory.retried.contains(&id) {
                let highest = memory.attempts.entry(id.clone()).or_default();
                *highest = (*highest).max(attempt);
            }
        }
        if kind == "command" && s.seen.insert(id.clone()) {
            let mut memory = self.memory();
            let pushed = memory.pushed.entry(s.agent.clone()).or_default();
            repush = !pushed.insert(id.clone());
            at_connect = repush || memory.queued.contains(&id);
            if repush {
                memory.repushed.insert(id.clone());
            }
        }
        // Only the faults that push a command again, or need its agent, keep
        // a copy of every push.
        let keeps_frames = matches!(
            self.fault,
            Fault::FailedRepushedOnReconnect
                | Fault::RepeatedIdRequeues
                | Fault::AttemptsSpentOffline
                | Fault::FinalAckLeavesTimer
        );
        if kind == "command" && keeps_frames {
            let frame = (s.agent.clone(), message.clone());
            self.memory().frames.insert(id.clone(), frame);
        }
        let edit = |f: &dyn Fn(&mut Json)| {
            let mut frame = Json::parse(&message).unwrap();
            f(&mut frame);
            vec![Act::Agent(Message::text(frame.to_text()))]
        };
        let command = kind == "command";
        match self.fault {
            Fault::NoWelcome if kind == "connected" => vec![],
            Fault::TimestampsWithoutZone | Fault::LocalTimeMarkedZ => {
                edit(&|f| f.edit_strings(&|text| misdate(self.fault, text)))
            }
            Fault::WelcomeWrongAgentId if kind == "connected" => edit(&|f| {
                f.get_mut("data")
                    .unwrap()
                    .insert("edge_agent_id", Json::String("edge-agent".into()))
            }),
            Fault::ErrorWithoutMessage if kind == "error" => {
                edit(&|f| f.get_mut("data").unwrap().remove("message"))
            }
            // Held past the harness's wait for a first message (1 s): the
            // pending commands, pushed meanwhile, go first however long the
            // server takes to push them, or nothing comes first.
            Fault::PendingBeforeWelcome if kind == "connected" => {
                vec![Act::AgentAt(
                    Instant::now() + Duration::from_secs(3),
                    message,
                )]
            }
            Fault::WelcomeWithoutTimers if kind == "connected" => edit(&|f| {
                let data = f.get_mut("data").unwrap();
                for timer in ["ping_interval", "ping_timeout", "ack_timeout"] {
                    data.remove(&format!("{timer}_s"));
                    data.remove(&format!("{timer}_ms"));
                }
                data.remove("max_attempts");
            }),
            Fault::WelcomeVersionAsNumber if kind == "connected" => edit(&|f| {
                f.get_mut("data").unwrap().insert(
                    "protocol_version",
                    Json::Number(serde_json::Number::from_f64(1.0).unwrap()),
                );
            }),
            Fault::ImmediateRelayedAsIs if command && self.memory().immediate.contains(&id) => {
                edit(&|f| {
                    let data = f.get_mut("data").unwrap();
                    data.insert("priority", Json::String("immediate".into()))
                })
            }
            Fault::NoPong if kind == "pong" => vec![],
            Fault::OnlyFirstExtraAnswered
                if code == "rate_limited"
                    && !self.memory().limited_once.insert(s.agent.clone()) =>
            {
                vec![]
            }
            Fault::PingWindowNeverPasses
                if kind == "pong" && !self.memory().ponged.insert(s.agent.clone()) =>
            {
                let limited = json!({"type": "error", "data": {"code": "rate_limited", "message": "too many pings"}});
                vec![Act::Agent(Message::text(limited.to_string()))]
            }
            Fault::NoPingRateLimit if code == "rate_limited" && s.last_type == "ping" => {
                vec![Act::Agent(Message::text(r#"{"type":"pong"}"#))]
            }
            Fault::NoMessageRateLimit if code == "rate_limited" => vec![],
            Fault::RateLimitedPingAlsoPonged if code == "rate_limited" && s.last_type == "ping" => {
                vec![
                    Act::Agent(message),
                    Act::Agent(Message::text(r#"{"type":"pong"}"#)),
                ]
            }
            Fault::PingLimitPerSocket
                if code == "rate_limited" && s.last_type == "ping" && s.pings == 1 =>
            {
                vec![Act::Agent(Message::text(r#"{"type":"pong"}"#))]
            }
            Fault::MessageLimitPerSocket if code == "rate_limited" && s.messages <= 100 => vec![],
            // The server has read and ignored that message, and every one
            // before it: the status is stored after them, as if processed.
            Fault::ExtraMessagesProcessed if code == "rate_limited" => {
                match s.ignored.pop_front().filter(Value::is_object) {
                    Some(status) => vec![Act::Agent(message), Act::StoreStatus(status)],
                    None => vec![Act::Agent(message)],
                }
            }
            Fault::RateLimitClosesSocket if code == "rate_limited" && s.last_type != "ping" => {
                vec![Act::Close(1008, "rate limited")]
            }
            Fault::RateLimitStopsDelivery if command && s.rate_limited => vec![],
            Fault::OneErrorCodeForAll
                if ["invalid_json", "unknown_type", "unsupported_frame"]
                    .contains(&code.as_str()) =>
            {
                edit(&|f| {
                    f.get_mut("data")
                        .unwrap()
                        .insert("code", Json::String("invalid_message".into()))
                })
            }
            Fault::UnknownTypeClosesSocket if code == "unknown_type" => {
                vec![Act::Close(1003, "unsupported data")]
            }
            Fault::SilentOnUnknownAck if code == "unknown_command" => vec![],
            Fault::ForeignAckIsForbidden
                if code == "unknown_command"
                    && data["ref"]
                        .as_str()
                        .is_some_and(|r| self.memory().created.contains(r)) =>
            {
                edit(&|f| {
                    f.get_mut("data")
                        .unwrap()
                        .insert("code", Json::String("forbidden".into()))
                })
            }
            Fault::NoStringTypeIsUnknownType if code == "invalid_message" && s.untyped => {
                edit(&|f| {
                    f.get_mut("data")
                        .unwrap()
                        .insert("code", Json::String("unknown_type".into()))
                })
            }
            Fault::BadDataIgnored if code == "invalid_message" && s.last_type == "command_ack" => {
                vec![]
            }
            Fault::ExtraPingsDropped if code == "rate_limited" && s.last_type == "ping" => vec![],
            Fault::UnknownAckIsNotFound if code == "unknown_command" => edit(&|f| {
                f.get_mut("data")
                    .unwrap()
                    .insert("code", Json::String("not_found".into()))
            }),
            Fault::ForeignAckAccepted if code == "unknown_command" => {
                // Taken as if the agent owned it: no error, and the state changes.
                let cid = data["ref"].as_str().unwrap_or("").to_string();
                let mut memory = self.memory();
                if !memory.created.contains(&cid) {
                    return vec![Act::Agent(message)];
                }
                memory.last_ack.insert(cid, "completed".into());
                vec![]
            }
            // Lost for good: every later delivery of them too.
            Fault::DropsQueuedCommands if command && self.memory().queued.contains(&id) => vec![],
            Fault::NeverRedelivers if command && attempt > 1 => vec![],
            Fault::ExpiredSentRedelivered
                if command && attempt == 1 && !data["expires_at"].is_null() =>
            {
                let mut again = value.clone();
                again["data"]["attempt"] = json!(2);
                let due = Instant::now() + s.ack_timeout + Duration::from_secs(1);
                vec![
                    Act::Agent(message),
                    Act::AgentAt(due, Message::text(again.to_string())),
                ]
            }
            Fault::BackoffTooLong if command && attempt > 1 => {
                let extra = Duration::from_secs(2 << (attempt - 2).min(6));
                vec![Act::AgentAt(Instant::now() + extra, message)]
            }
            Fault::WrongPriorityOrder
            | Fault::IgnoresPriority
            | Fault::PrioritySortedByName
            | Fault::LifoWithinPriority
            | Fault::SentFirstAtConnect
                if command && at_connect =>
            {
                vec![Act::Hold(Json::parse(&message).unwrap())]
            }
            Fault::UnackedNotRepushed if repush => vec![],
            Fault::ProgressNotRepushed if repush && self.memory().progress.contains_key(&id) => {
                vec![]
            }
            Fault::OneAttemptTooFew if command && attempt == s.max_attempts => vec![],
            Fault::ReconnectPushNotCounted if repush && attempt > 1 => edit(&|f| {
                f.get_mut("data")
                    .unwrap()
                    .insert("attempt", Json::from(attempt - 1))
            }),
            Fault::AttemptStartsAtZero if command => edit(&|f| {
                f.get_mut("data")
                    .unwrap()
                    .insert("attempt", Json::from(attempt - 1))
            }),
            Fault::PriorityAsNumber if command => edit(&|f| {
                let data = f.get_mut("data").unwrap();
                let rank = match data.get("priority").map(Json::to_text).as_deref() {
                    Some("\"high\"") => 1,
                    Some("\"low\"") => 3,
                    _ => 2,
                };
                data.insert("priority", Json::from(rank));
            }),
            Fault::CreatedAtAsEpoch if command => edit(&|f| {
                f.get_mut("data")
                    .unwrap()
                    .insert("created_at", Json::from(unix_now() as u64 * 1000));
            }),
            Fault::CreatedAtHttpDate if command => edit(&|f| {
                f.get_mut("data")
                    .unwrap()
                    .insert("created_at", Json::String(HTTP_DATE.into()));
            }),
            Fault::ParametersAsString if command => edit(&|f| {
                let data = f.get_mut("data").unwrap();
                for key in ["parameters", "payload"] {
                    if let Some(value) = data.get(key) {
                        let text = Json::String(value.to_text());
                        data.insert(key, text);
                    }
                }
            }),
            Fault::CamelCaseCommandFields if command => edit(&|f| {
                let data = f.get_mut("data").unwrap();
                data.rename("command_id", "commandId");
                data.rename("command_type", "commandType");
                data.rename("created_at", "createdAt");
            }),
            Fault::ResortsPayloadKeys if command => edit(&|f| {
                if let Some(payload) = f.get_mut("data").unwrap().get_mut("payload") {
                    payload.sort_keys();
                }
            }),
            Fault::FailedRepushedOnReconnect | Fault::RepeatedIdRequeues if kind == "connected" => {
                let mut memory = self.memory();
                let mine: Vec<String> = (memory.replay.iter())
                    .filter(|id| memory.frames.get(*id).is_some_and(|(a, _)| *a == s.agent))
                    .cloned()
                    .collect();
                let mut acts = vec![Act::Agent(message)];
                for id in mine {
                    memory.replay.remove(&id);
                    let mut frame = Json::parse(&memory.frames[&id].1).unwrap();
                    frame
                        .get_mut("data")
                        .unwrap()
                        .insert("attempt", Json::from(2));
                    acts.push(Act::Agent(Message::text(frame.to_text())));
                }
                acts
            }
            Fault::SyncedNotPushedOnConnect if command && self.memory().via_sync.contains(&id) => {
                vec![]
            }
            Fault::RetryNotPushedLive
                if command
                    && (self.memory().retried_at.get(&id)).is_some_and(|at| s.opened < *at) =>
            {
                vec![]
            }
            Fault::AttemptsSpentOffline if command && repush && self.away_long(&id, false) => {
                edit(&|f| {
                    f.get_mut("data")
                        .unwrap()
                        .insert("attempt", Json::from(attempt + 1))
                })
            }
            // Every push, or (WhenRepushed) every push but a live first one.
            Fault::ResortsParameterKeys | Fault::ResortsParametersWhenRepushed
                if command
                    && (self.fault == Fault::ResortsParameterKeys || attempt > 1 || at_connect) =>
            {
                edit(&|f| {
                    let data = f.get_mut("data").unwrap();
                    for key in ["parameters", "payload"] {
                        if let Some(value) = data.get_mut(key) {
                            value.sort_keys();
                        }
                    }
                })
            }
            Fault::CreatedAtRestamped if command && attempt > 1 => edit(&|f| {
                let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
                f.get_mut("data")
                    .unwrap()
                    .insert("created_at", Json::String(now.to_string()))
            }),
            Fault::IntegerKeysFirst if command => edit(&|f| {
                let data = f.get_mut("data").unwrap();
                for key in ["parameters", "payload"] {
                    if let Some(value) = data.get_mut(key) {
                        value.integer_keys_first();
                    }
                }
            }),
            // Every edit goes through f64 for numbers: an empty edit is the fault.
            Fault::RoundsNumbersToDouble if command => edit(&|_| {}),
            Fault::OneAttemptTooMany if command && attempt == s.max_attempts => {
                let backoff =
                    Duration::from_secs(1 << (attempt - 1).min(6)).min(Duration::from_secs(60));
                let at = Instant::now() + s.ack_timeout + backoff;
                self.memory()
                    .extra_until
                    .insert(id.clone(), at + s.ack_timeout);
                let mut extra = Json::parse(&message).unwrap();
                extra
                    .get_mut("data")
                    .unwrap()
                    .insert("attempt", Json::from(attempt + 1));
                vec![
                    Act::Agent(message),
                    Act::AgentAt(at, Message::text(extra.to_text())),
                ]
            }
            Fault::InFlightLostOnRestart
            | Fault::QueueInMemory
            | Fault::ReplacementLosesInFlight
            | Fault::AcceptedBeforeDurable
            | Fault::InFlightLostOnCrash
                if command && self.memory().lost.contains(&id) =>
            {
                vec![]
            }
            Fault::QueueFullEvictsOldest if command => {
                let mut memory = self.memory();
                if memory.evict.remove(&s.agent) {
                    memory.lost.insert(id.clone());
                }
                if memory.lost.contains(&id) {
                    return vec![];
                }
                vec![Act::Agent(message)]
            }
            Fault::ReplacedCleanupUnregistersNew
                if command && self.memory().unregistered.contains(&s.agent) =>
            {
                vec![]
            }
            Fault::ReprovisionDropsQueue
                if command && self.memory().reprovisioned.contains(&s.agent) =>
            {
                vec![]
            }
            Fault::NoExpiresAt if command => {
                edit(&|f| f.get_mut("data").unwrap().remove("expires_at"))
            }
            Fault::ExpiresAtIsCreatedAt if command => edit(&|f| {
                let data = f.get_mut("data").unwrap();
                if data.get("expires_at").is_some() {
                    let created = data.get("created_at").unwrap().clone();
                    data.insert("expires_at", created);
                }
            }),
            Fault::NoPayloadCopy if command => {
                edit(&|f| f.get_mut("data").unwrap().remove("payload"))
            }
            Fault::RetryKeepsTtl if command && self.memory().retried.contains(&id) => vec![],
            Fault::RetryKeepsAttempts if command && self.memory().retried.contains(&id) => {
                let used = self.memory().attempts.get(&id).copied().unwrap_or(0);
                edit(&|f| {
                    f.get_mut("data")
                        .unwrap()
                        .insert("attempt", Json::from(used + attempt))
                })
            }
            Fault::ConfigUpdateWrapped if kind == "config_update" => edit(&|f| {
                let data = f.remove_value("data").unwrap_or(Json::Null);
                f.insert("data", Json::Object(vec![("config".into(), data)]));
            }),
            Fault::ConfigNotPushed if kind == "config_update" => vec![],
            Fault::ResortsConfigKeys if kind == "config_update" => {
                edit(&|f| f.get_mut("data").unwrap().sort_keys())
            }
            _ => vec![Act::Agent(message)],
        }
    }
}

/// Accepts the upgrade itself (no server behind it), then sends `first`
/// and, `after` that, closes with `code` (0: waits for the agent to close).
async fn accept_then_close(
    mut client: TcpStream,
    request: &Http,
    first: Option<Value>,
    code: u16,
    after: Duration,
) {
    let key = request
        .header("sec-websocket-key")
        .unwrap_or("")
        .to_string();
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    if client.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut ws = WebSocketStream::from_raw_socket(client, Role::Server, None).await;
    if let Some(first) = first {
        let _ = ws.send(Message::text(first.to_string())).await;
    }
    tokio::time::sleep(after).await;
    if code != 0 {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        let _ = ws.send(Message::Close(Some(frame))).await;
    }
    while let Some(Ok(_)) = ws.next().await {}
}

/// An empty, masked frame with the reserved opcode 3 (as the harness sends it).
fn reserved_opcode_frame() -> Vec<u8> {
    let mut bytes = Vec::new();
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Reserved(3)),
        mask: Some([1, 2, 3, 4]),
        ..FrameHeader::default()
    };
    header.format(0, &mut bytes).unwrap();
    bytes
}

fn json(message: &Message) -> Option<Value> {
    match message {
        Message::Text(text) => serde_json::from_str(text).ok(),
        _ => None,
    }
}

/// The routes PROTOCOL.md names (prefixes); any other path is unknown.
const ROUTES: [&str; 9] = [
    "/edge/ws",
    "/edge/sync",
    "/edge/command/ack",
    "/edge/ack_command",
    "/edge/register",
    "/api/agents",
    "/api/commands",
    "/api/stats",
    "/metrics",
];

fn is_command_post(request: &Http) -> bool {
    request.method() == "POST"
        && request.path().starts_with("/api/agents/")
        && request.path().ends_with("/commands")
}

/// An `error` message from "the backend" (WS-ERR-1).
fn error_to_agent(code: &str, message: &str) -> Act {
    let error = json!({"type": "error", "data": {"code": code, "message": message}});
    Act::Agent(Message::text(error.to_string()))
}

/// A date as `toUTCString()` writes it (which one does not matter).
const HTTP_DATE: &str = "Thu, 03 Dec 2026 20:44:49 GMT";

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The same token with one hex digit of its HMAC changed.
fn forge(token: &str) -> String {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut text = engine.decode(token).unwrap_or_default();
    if let Some(last) = text.last_mut() {
        *last = if *last == b'0' { b'1' } else { b'0' };
    }
    engine.encode(text)
}

/// A per-agent HMAC token (WS-AUTH-5): (agent id, issued at).
/// Whether `given` is a non-empty proper prefix of `secret`.
fn is_short_prefix(given: &str, secret: &str) -> bool {
    !given.is_empty() && given.len() < secret.len() && secret.starts_with(given)
}

/// An HMAC token (`base64("…:signature")`) whose signature is a proper
/// prefix of the right one, made whole (PrefixSignatureAccepted).
fn signature_completed(token: &str, key: &str) -> Option<String> {
    use hmac::{Hmac, KeyInit, Mac};
    let engine = base64::engine::general_purpose::STANDARD;
    let text = String::from_utf8(engine.decode(token).ok()?).ok()?;
    let (message, signature) = text.rsplit_once(':')?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).ok()?;
    mac.update(message.as_bytes());
    let whole = hex::encode(mac.finalize().into_bytes());
    is_short_prefix(signature, &whole).then(|| engine.encode(format!("{message}:{whole}")))
}

fn hmac_token(token: &str) -> Option<(String, i64)> {
    let text = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()?;
    let text = String::from_utf8(text).ok()?;
    let parts: Vec<&str> = text.split(':').collect();
    match parts.as_slice() {
        [id, _phone, ts, _mac] => Some((id.to_string(), ts.parse().ok()?)),
        _ => None,
    }
}

/// Sets to 0 the value of every sample of a `/metrics` answer that `which`
/// picks (`name{labels} value`).
fn zero_samples(answer: &mut Http, which: impl Fn(&str) -> bool) {
    edit_lines(answer, |line| {
        Some(match line.rsplit_once(' ') {
            Some((sample, _)) if !line.starts_with('#') && which(sample) => format!("{sample} 0"),
            _ => line.to_string(),
        })
    });
}

/// A UTC timestamp (`…Z`) as the timestamp faults write it: without its
/// zone, or an hour later (UTC+1's local time) still marked `Z`.
fn misdate(fault: Fault, text: &str) -> Option<String> {
    let at = humantime::parse_rfc3339(text).ok()?;
    match fault {
        Fault::TimestampsWithoutZone => Some(text.trim_end_matches(['Z', 'z']).to_string()),
        _ => Some(humantime::format_rfc3339_millis(at + Duration::from_secs(3600)).to_string()),
    }
}

/// Rewrites a text answer line by line (`None` drops the line), keeping
/// its content type.
fn edit_lines(answer: &mut Http, edit: impl Fn(&str) -> Option<String>) {
    let text = String::from_utf8_lossy(&answer.body).to_string();
    let lines: Vec<String> = text.lines().filter_map(edit).collect();
    let content_type = answer
        .header("content-type")
        .unwrap_or("text/plain")
        .to_string();
    answer.set_body(&content_type, &(lines.join("\n") + "\n"));
}

/// A broken limiter's refusal: 429 `rate_limited` with `Retry-After: 60`.
fn too_many_attempts() -> Http {
    let mut answer = Http::answer(
        429,
        json!({"error": "rate_limited", "message": "too many attempts"}),
    );
    answer.set_header("retry-after", "60");
    answer
}

fn query_param(path: &str, name: &str) -> Option<String> {
    let query = path.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| value.to_string())
    })
}

/// Reads up to the end of an HTTP head; returns (head, bytes read past it).
async fn read_head(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((String::from_utf8_lossy(&buf).to_string(), rest));
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl Http {
    /// A whole message as read to the end of the connection.
    fn parse(raw: &[u8]) -> Option<Http> {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let mut http = Http {
            head: String::from_utf8_lossy(&raw[..end + 4]).to_string(),
            body: raw[end + 4..].to_vec(),
        };
        if http
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            // A body cut short stays as it came.
            http.body = dechunk(&http.body).unwrap_or_else(|| http.body.clone());
            http.remove_header("transfer-encoding");
            http.set_header("content-length", &http.body.len().to_string());
        }
        Some(http)
    }

    /// An answer made by the proxy.
    fn answer(status: u16, body: Value) -> Http {
        let mut http = Http {
            head: format!("HTTP/1.1 {status} X\r\n\r\n"),
            body: Vec::new(),
        };
        http.set_json(body);
        http.set_header("connection", "close");
        http
    }

    fn first_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    fn method(&self) -> &str {
        self.first_line().split_whitespace().next().unwrap_or("")
    }

    fn path(&self) -> &str {
        self.first_line().split_whitespace().nth(1).unwrap_or("")
    }

    fn status(&self) -> u16 {
        self.path().parse().unwrap_or(0)
    }

    fn set_path(&mut self, path: &str) {
        let line = format!("{} {path} HTTP/1.1", self.method());
        let rest = self
            .head
            .split_once("\r\n")
            .map_or("", |(_, r)| r)
            .to_string();
        self.head = format!("{line}\r\n{rest}");
    }

    fn set_status(&mut self, status: u16) {
        let rest = self
            .head
            .split_once("\r\n")
            .map_or("", |(_, r)| r)
            .to_string();
        self.head = format!("HTTP/1.1 {status} X\r\n{rest}");
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn remove_header(&mut self, name: &str) {
        let lines: Vec<&str> = self
            .head
            .trim_end()
            .lines()
            .filter(|l| {
                !l.split(':')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case(name)
            })
            .collect();
        self.head = lines.join("\r\n") + "\r\n\r\n";
    }

    fn set_header(&mut self, name: &str, value: &str) {
        self.remove_header(name);
        self.head = format!("{}\r\n{name}: {value}\r\n\r\n", self.head.trim_end());
    }

    fn content_length(&self) -> usize {
        self.header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    fn set_body(&mut self, content_type: &str, body: &str) {
        self.body = body.as_bytes().to_vec();
        self.set_header("content-type", content_type);
        self.set_header("content-length", &self.body.len().to_string());
    }

    fn set_json(&mut self, body: Value) {
        self.set_body("application/json", &body.to_string());
    }

    /// Edits the JSON body in place, keeping its members' order.
    fn edit_json(&mut self, edit: impl FnOnce(&mut Json)) {
        let Ok(mut body) = serde_json::from_slice::<Json>(&self.body) else {
            return;
        };
        edit(&mut body);
        self.set_body("application/json", &body.to_text());
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.head.clone().into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// JSON that keeps its members in the order they were written, so a fault
/// that edits one field changes nothing else (WS-CMD-2 compares order).
mod ordered {
    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
    use tokio_tungstenite::tungstenite::Message;

    #[derive(Debug, Clone, PartialEq)]
    pub enum Json {
        Null,
        Bool(bool),
        Number(serde_json::Number),
        String(String),
        Array(Vec<Json>),
        Object(Vec<(String, Json)>),
    }

    impl Json {
        pub fn parse(message: &Message) -> Option<Json> {
            match message {
                Message::Text(text) => serde_json::from_str(text).ok(),
                _ => None,
            }
        }

        pub fn to_text(&self) -> String {
            serde_json::to_string(self).unwrap()
        }

        pub fn get(&self, key: &str) -> Option<&Json> {
            match self {
                Json::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => None,
            }
        }

        pub fn get_mut(&mut self, key: &str) -> Option<&mut Json> {
            match self {
                Json::Object(members) => members.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => None,
            }
        }

        pub fn as_u64(&self) -> Option<u64> {
            match self {
                Json::Number(n) => n.as_u64(),
                _ => None,
            }
        }

        /// Sets a member: in its place if it exists, else at the end.
        pub fn insert(&mut self, key: &str, value: Json) {
            if let Some(slot) = self.get_mut(key) {
                *slot = value;
            } else if let Json::Object(members) = self {
                members.push((key.to_string(), value));
            }
        }

        pub fn remove_value(&mut self, key: &str) -> Option<Json> {
            let Json::Object(members) = self else {
                return None;
            };
            let at = members.iter().position(|(k, _)| k == key)?;
            Some(members.remove(at).1)
        }

        pub fn remove(&mut self, key: &str) {
            self.remove_value(key);
        }

        pub fn rename(&mut self, from: &str, to: &str) {
            if let Json::Object(members) = self {
                for (key, _) in members.iter_mut().filter(|(k, _)| k == from) {
                    *key = to.to_string();
                }
            }
        }

        /// Integer-like keys first, ascending, at every depth (what a
        /// JavaScript object does with its property order).
        pub fn integer_keys_first(&mut self) {
            match self {
                Json::Object(members) => {
                    let index = |k: &str| {
                        k.parse::<u32>()
                            .ok()
                            .filter(|_| !k.starts_with('0') || k == "0")
                    };
                    members.sort_by_key(|(k, _)| index(k).map_or((1, 0), |n| (0, n)));
                    members.iter_mut().for_each(|(_, v)| v.integer_keys_first());
                }
                Json::Array(items) => items.iter_mut().for_each(Json::integer_keys_first),
                _ => {}
            }
        }

        /// Replaces the strings `edit` has a replacement for, at every depth.
        pub fn edit_strings(&mut self, edit: &dyn Fn(&str) -> Option<String>) {
            match self {
                Json::String(text) => {
                    if let Some(new) = edit(text) {
                        *text = new;
                    }
                }
                Json::Object(members) => members.iter_mut().for_each(|(_, v)| v.edit_strings(edit)),
                Json::Array(items) => items.iter_mut().for_each(|v| v.edit_strings(edit)),
                _ => {}
            }
        }

        /// Sorts object keys at every depth (what a jsonb column does).
        pub fn sort_keys(&mut self) {
            match self {
                Json::Object(members) => {
                    members.sort_by(|a, b| a.0.cmp(&b.0));
                    members.iter_mut().for_each(|(_, v)| v.sort_keys());
                }
                Json::Array(items) => items.iter_mut().for_each(Json::sort_keys),
                _ => {}
            }
        }
    }

    impl From<u64> for Json {
        fn from(n: u64) -> Json {
            Json::Number(n.into())
        }
    }

    impl<'de> Deserialize<'de> for Json {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Json;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("JSON")
                }
                fn visit_unit<E>(self) -> Result<Json, E> {
                    Ok(Json::Null)
                }
                fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
                    Ok(Json::Bool(b))
                }
                fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
                    Ok(Json::Number(n.into()))
                }
                fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
                    Ok(Json::Number(n.into()))
                }
                fn visit_f64<E>(self, n: f64) -> Result<Json, E> {
                    Ok(serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number))
                }
                fn visit_str<E>(self, s: &str) -> Result<Json, E> {
                    Ok(Json::String(s.to_string()))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                    let mut items = Vec::new();
                    while let Some(item) = seq.next_element()? {
                        items.push(item);
                    }
                    Ok(Json::Array(items))
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                    let mut members = Vec::new();
                    while let Some((k, v)) = map.next_entry::<String, Json>()? {
                        members.push((k, v));
                    }
                    Ok(Json::Object(members))
                }
            }
            d.deserialize_any(V)
        }
    }

    impl Serialize for Json {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self {
                Json::Null => s.serialize_unit(),
                Json::Bool(b) => s.serialize_bool(*b),
                Json::Number(n) => n.serialize(s),
                Json::String(text) => s.serialize_str(text),
                Json::Array(items) => {
                    let mut seq = s.serialize_seq(Some(items.len()))?;
                    for item in items {
                        seq.serialize_element(item)?;
                    }
                    seq.end()
                }
                Json::Object(members) => {
                    let mut map = s.serialize_map(Some(members.len()))?;
                    for (k, v) in members {
                        map.serialize_entry(k, v)?;
                    }
                    map.end()
                }
            }
        }
    }
}
