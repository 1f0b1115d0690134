//! The suite catches real bugs: each broken backend (a correct edge-server
//! behind a proxy injecting one [`Fault`]) fails the check named for it,
//! with failures only in the family of the rule it breaks (`WS-AUTH`, …);
//! and every check used here passes through the same proxy when it injects
//! nothing, so a failure is the fault's, not the proxy's.
//!
//! One table, [`faults!`] below: `test: Fault => "RULE", [fails; also]`.
//! Every check of `fails` must fail, the first with that very rule; the
//! checks of `also` run too (most pass: the fault is narrow). Any failure
//! must stay in the rule's family. `"RULE" @ Setup` runs the row against
//! another server setup (e.g. without a registration token).
//!
//! Each row is its own test (nextest runs them in parallel) and runs only
//! the broken backend, without retries; one test,
//! `all_checks_used_pass_through_the_transparent_proxy`, runs the union of
//! the rows' checks once per setup through the transparent proxy, with
//! retries as CI runs them. scenarios/MUTATIONS.md lists the mutations
//! behind the faults, and those no check catches yet.

use std::collections::BTreeSet;
use std::sync::Arc;

use edge_harness::conform::{self, Options};
use edge_harness::embedded::{self, Embedded};
use edge_harness::report::{RunReport, Status};
use edge_harness::suite;
use edge_harness::target::{Lifecycle, Target};

use crate::proxy::{self, Fault, Secrets, LOAD_FAULTS};

/// The server a row runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Setup {
    /// The embedded edge-server as `conform` runs it (registration on).
    Default,
    /// No REGISTRATION_TOKEN: registration answers 403 (`@ NoRegistration`).
    NoRegistration,
}

macro_rules! setup {
    () => {
        Setup::Default
    };
    ($setup:ident) => {
        Setup::$setup
    };
}

struct Case {
    fault: Fault,
    rule: &'static str,
    setup: Setup,
    /// Checks that must fail: the first with `rule`, the others in its family.
    fails: &'static [&'static str],
    /// Checks that run too (e.g. the fault leaves them alone); a failure
    /// must stay in the family.
    also: &'static [&'static str],
}

impl Case {
    fn checks(&self) -> impl Iterator<Item = &'static str> {
        self.fails.iter().chain(self.also).copied()
    }
}

macro_rules! faults {
    ($($test:ident: $fault:ident => $rule:literal $(@ $setup:ident)?, [$($fail:literal),+ $(; $($also:literal),+)?];)+) => {
        const CASES: &[Case] = &[$(Case {
            fault: Fault::$fault,
            rule: $rule,
            setup: setup!($($setup)?),
            fails: &[$($fail),+],
            also: &[$($($also),+)?],
        }),+];
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                assert_caught(Fault::$fault).await;
            }
        )+
    };
}

faults! {
    // ---- request head and body ----
    tokens_logged: TokensLogged => "WS-AUTH-5", ["tokens-never-logged"];
    accepts_any_token: AcceptsAnyToken => "WS-AUTH-1", ["wrong-token-refused", "missing-token-refused", "malformed-authorization-refused"];
    admin_api_open_to_edge_secret: AdminApiOpenToEdgeSecret => "WS-API-1", ["edge-secret-does-not-open-the-api"];
    api_accepts_agent_tokens: ApiAcceptsAgentTokens => "WS-API-1", ["agent-token-does-not-open-the-api"; "edge-secret-does-not-open-the-api"];
    admin_token_opens_sockets: AdminTokenOpensSockets => "WS-API-1", ["admin-token-opens-no-socket"];
    ignores_header_id_mismatch: IgnoresHeaderIdMismatch => "WS-AUTH-3", ["header-id-mismatch-is-400"; "header-may-duplicate-the-id", "missing-agent-id-is-400"];
    rejects_header_id: RejectsHeaderId => "WS-AUTH-3", ["header-may-duplicate-the-id"; "header-id-mismatch-is-400"];
    falls_back_to_header_id: FallsBackToHeaderId => "WS-AUTH-3", ["missing-agent-id-is-400"; "header-id-mismatch-is-400"];
    accepts_expired_tokens: AcceptsExpiredTokens => "WS-AUTH-5", ["expired-token-refused"; "future-token-refused", "own-hmac-token-opens"];
    accepts_future_tokens: AcceptsFutureTokens => "WS-AUTH-5", ["future-token-refused"; "expired-token-refused"];
    token_opens_any_agent: TokenOpensAnyAgent => "WS-AUTH-5", ["other-agents-token-refused"; "own-hmac-token-opens"];
    shared_secret_only: SharedSecretOnly => "WS-AUTH-5", ["own-hmac-token-opens"];
    signature_not_verified: SignatureNotVerified => "WS-AUTH-5", ["forged-token-refused"; "own-hmac-token-opens"];
    token_valid_one_hour: TokenValidOneHour => "WS-AUTH-5", ["token-valid-for-24h-with-skew"; "expired-token-refused"];
    no_clock_skew: NoClockSkew => "WS-AUTH-5", ["token-valid-for-24h-with-skew"; "future-token-refused"];
    api_accepts_missing_token: ApiAcceptsMissingToken => "WS-API-1", ["no-or-wrong-token-does-not-open-the-api"; "edge-secret-does-not-open-the-api"];
    immediate_is_normal: ImmediateIsNormal => "WS-CMD-1", ["priority-defaults-and-compat"];
    default_priority_low: DefaultPriorityLow => "WS-CMD-1", ["priority-defaults-and-compat"];
    only_spec_command_types: OnlySpecCommandTypes => "WS-CMD-1", ["ttl-gives-expires_at-and-other-types-pass"; "command-is-pushed-with-its-fields"];
    http_last_ack_wins: HttpLastAckWins => "WS-HTTP-2", ["http-late-ack-keeps-the-final-state"];
    sync_as_anyone: SyncAsAnyone => "WS-HTTP-1", ["sync-only-as-itself"; "sync-returns-pending-commands"];
    sync_interval_not_sent: SyncIntervalNotSent => "WS-HTTP-1", ["sync-pushes-its-interval"; "sync-returns-pending-commands"];
    http_ack_ignored: HttpAckIgnored => "WS-HTTP-2", ["http-ack-completes"];
    no_ack_alias: NoAckAlias => "WS-HTTP-2", ["http-ack-alias"; "http-ack-completes"];
    ack_alias_is_stub: AckAliasIsStub => "WS-HTTP-2", ["http-ack-alias"; "http-ack-completes"];
    registration_accepts_any_token: RegistrationAcceptsAnyToken => "WS-HTTP-3", ["register-with-wrong-token-is-401"; "register-is-idempotent-per-phone"];
    registration_disabled_is_401: RegistrationDisabledIs401 => "WS-HTTP-3" @ NoRegistration, ["registration-disabled-is-403"];
    registration_open_when_unconfigured: RegistrationOpenWhenUnconfigured => "WS-HTTP-3" @ NoRegistration, ["registration-disabled-is-403"];
    registration_not_idempotent: RegistrationNotIdempotent => "WS-HTTP-3", ["register-is-idempotent-per-phone"];
    ttl_ignored: TtlIgnored => "WS-DLV-7", ["ttl-expires-and-is-never-sent"];
    ignores_command_id: IgnoresCommandId => "WS-API-2", ["command-id-is-idempotent"];
    edge_secret_registers: EdgeSecretRegisters => "WS-HTTP-3", ["edge-secret-never-registers"];
    refuses_second_connection: RefusesSecondConnection => "WS-CONN-2", ["duplicate-replaces-old-and-redelivers", "duplicate-closes-old-with-4000"];
    limit_never_resets: LimitNeverResets => "WS-RATE-1", ["connection-limit-window-passes"];
    counts_rejects_per_agent: CountsRejectsPerAgent => "WS-RATE-1", ["strangers-cannot-lock-an-agent-out"; "connection-attempts-per-agent-limited", "refused-upgrades-limited-per-address"];

    // ---- HTTP answers, refused upgrades included ----
    refuses_with_bare_403: RefusesWithBare403 => "WS-AUTH-2", ["refusal-is-401-with-json-body"; "wrong-token-refused", "missing-token-refused"];
    refuses_with_close_1008: RefusesWithClose1008 => "WS-AUTH-2", ["refusal-is-401-with-json-body", "missing-token-refused", "wrong-token-refused"];
    refuses_late: RefusesLate => "WS-AUTH-2", ["refusal-is-401-with-json-body", "missing-token-refused"];
    welcomes_before_refusing: WelcomesBeforeRefusing => "WS-AUTH-1", ["wrong-token-refused", "missing-token-refused"];
    unknown_agent_is_401: UnknownAgentIs401 => "WS-AUTH-4", ["unknown-agent-refused", "unknown-agent-is-403-unknown_agent"];
    unknown_agent_is_404: UnknownAgentIs404 => "WS-AUTH-4", ["unknown-agent-refused", "unknown-agent-is-403-unknown_agent"];
    unknown_agent_error_forbidden: UnknownAgentErrorForbidden => "WS-AUTH-4", ["unknown-agent-is-403-unknown_agent"; "unknown-agent-refused"];
    refusal_is_html: RefusalIsHtml => "WS-AUTH-2", ["refusal-is-401-with-json-body"; "wrong-token-refused"];
    hmac_token_skips_agent_lookup: HmacTokenSkipsAgentLookup => "WS-AUTH-4", ["unknown-agent-refused-with-its-own-token"; "unknown-agent-refused"];
    accepts_unknown_agents: AcceptsUnknownAgents => "WS-AUTH-4", ["unknown-agent-refused", "unknown-agent-is-403-unknown_agent"];
    empty_id_is_unknown_agent: EmptyIdIsUnknownAgent => "WS-AUTH-3", ["empty-agent-id-is-400"; "missing-agent-id-is-400"];
    invalid_id_is_unknown_agent: InvalidIdIsUnknownAgent => "WS-AUTH-3", ["invalid-agent-id-is-400"];
    id_limit_off_by_one: IdLimitOffByOne => "WS-AUTH-3", ["longest-agent-id-is-valid"];
    phone_not_validated: PhoneNotValidated => "WS-AUTH-3", ["register-validates-the-phone"; "register-is-idempotent-per-phone"];
    phone_limit_off_by_one: PhoneLimitOffByOne => "WS-AUTH-3", ["register-validates-the-phone"; "register-is-idempotent-per-phone"];
    rate_limit_without_retry_after: RateLimitWithoutRetryAfter => "WS-RATE-1", ["connection-attempts-per-agent-limited", "refused-upgrades-limited-per-address"];
    retry_after_in_milliseconds: RetryAfterInMilliseconds => "WS-RATE-1", ["connection-attempts-per-agent-limited", "refused-upgrades-limited-per-address"];
    auth_before_rate_limit: AuthBeforeRateLimit => "WS-RATE-1", ["rate-limited-agent-gets-429-before-token-check", "refused-upgrades-limited-per-address", "strangers-cannot-lock-an-agent-out"; "connection-attempts-per-agent-limited"];
    address_limit_skips_valid_tokens: AddressLimitSkipsValidTokens => "WS-RATE-1", ["refused-address-gets-429-even-with-a-valid-token"; "refused-upgrades-limited-per-address"];
    rate_limit_is_503: RateLimitIs503 => "WS-RATE-1", ["connection-attempts-per-agent-limited", "refused-upgrades-limited-per-address"];
    no_connect_rate_limit: NoConnectRateLimit => "WS-RATE-1", ["connection-attempts-per-agent-limited", "refused-upgrades-limited-per-address"];
    http_ack_without_agent_id_accepted: HttpAckWithoutAgentIdAccepted => "WS-HTTP-2", ["http-ack-with-shared-secret-needs-agent-id"];
    http_ack_unknown_is_200: HttpAckUnknownIs200 => "WS-HTTP-2", ["http-ack-unknown-is-404"];
    registration_token_useless: RegistrationTokenUseless => "WS-HTTP-3", ["register-is-idempotent-per-phone"];
    api_errors_without_message: ApiErrorsWithoutMessage => "WS-HTTP-4", ["http-errors-are-json"];
    empty_body_on_405: EmptyBodyOn405 => "WS-HTTP-4", ["http-errors-are-json"];
    big_body_is_text_413: BigBodyIsText413 => "WS-HTTP-4", ["big-body-is-413-json"];
    http_ack_no_owner_check: HttpAckNoOwnerCheck => "WS-HTTP-2", ["http-ack-of-another-agents-command-is-404"; "http-ack-unknown-is-404"];
    retry_any_state: RetryAnyState => "WS-API-4", ["retry-is-only-for-dead-or-expired"];
    repeated_id_at_limit_is_429: RepeatedIdAtLimitIs429 => "WS-API-2", ["queue-full-is-429-and-nothing-is-dropped"];
    sync_returns_in_progress: SyncReturnsInProgress => "WS-DLV-5", ["sync-leaves-commands-in-progress"];
    status_first_only: StatusFirstOnly => "WS-STATUS-1", ["a-new-status-replaces-the-last"; "status-is-stored"];
    pending_ignores_progress: PendingIgnoresProgress => "WS-ACK-2", ["progress-ack-keeps-command-pending"];
    status_merged: StatusMerged => "WS-STATUS-1", ["a-new-status-replaces-the-last"; "status-is-stored"];
    config_delivered_when_offline: ConfigDeliveredWhenOffline => "WS-CFG-1", ["config-for-an-offline-agent-is-not-delivered"; "config-update-pushed"];
    config_broadcast: ConfigBroadcast => "WS-CFG-1", ["config-reaches-only-its-agent"; "config-update-pushed"];
    timed_out_agent_stays_registered: TimedOutAgentStaysRegistered => "WS-CONN-3", ["timed-out-agent-leaves-the-registry"; "silent-agent-is-closed"];
    ping_timeout_recorded_as_normal: PingTimeoutRecordedAsNormal => "WS-CONN-3", ["ping-timeout-recorded-as-ping_timeout"; "timed-out-agent-leaves-the-registry"];
    http_errors_not_json: HttpErrorsNotJson => "WS-HTTP-4", ["http-errors-are-json"];
    sync_ignores_priority: SyncIgnoresPriority => "WS-HTTP-1", ["sync-returns-pending-commands"];
    sync_acks_events_once: SyncAcksEventsOnce => "WS-HTTP-1", ["sync-acknowledges-events"];
    sync_attempt_not_counted: SyncAttemptNotCounted => "WS-DLV-5", ["sync-redelivers-after-ack-timeout"];
    sync_never_redelivers: SyncNeverRedelivers => "WS-DLV-5", ["sync-redelivers-after-ack-timeout"];
    sync_returns_sent_again: SyncReturnsSentAgain => "WS-DLV-5", ["sync-redelivers-after-ack-timeout"];
    last_ack_wins: LastAckWins => "WS-ACK-3", ["acks-are-idempotent", "late-ack-does-not-revive-expired", "late-ack-does-not-revive-dead"];
    stale_command_state: StaleCommandState => "WS-API-3", ["state-visible-within-100ms"];
    cache_cleared_on_acks_only: CacheClearedOnAcksOnly => "WS-API-3", ["every-state-change-visible-within-100ms"; "state-visible-within-100ms"];
    conflict_leaks_other_agents_command: ConflictLeaksOtherAgentsCommand => "WS-API-2", ["command-id-is-idempotent"];
    final_states_not_listed: FinalStatesNotListed => "WS-API-4", ["expired-listable-and-retryable", "dead-is-listable-and-retried-from-scratch"];
    retry_keeps_attempts: RetryKeepsAttempts => "WS-API-4", ["dead-is-listable-and-retried-from-scratch"];
    retry_keeps_ttl: RetryKeepsTtl => "WS-API-4", ["expired-listable-and-retryable"];
    queue_full_evicts_oldest: QueueFullEvictsOldest => "WS-API-2", ["queue-full-is-429-and-nothing-is-dropped"];
    queue_full_is_503: QueueFullIs503 => "WS-API-2", ["queue-full-is-429-and-nothing-is-dropped"];
    queue_full_counts_finished: QueueFullCountsFinished => "WS-API-2", ["a-full-queue-frees-as-commands-finish"; "queue-full-is-429-and-nothing-is-dropped"];
    server_ids_from_clock: ServerIdsFromClock => "WS-API-2", ["server-made-command-ids-are-unique"; "command-id-is-idempotent"];
    sync_resorts_parameter_keys: SyncResortsParameterKeys => "WS-CMD-2", ["sync-relays-parameters-as-posted"];
    resorts_status_keys: ResortsStatusKeys => "WS-CMD-2", ["status-relayed-as-posted"];
    progress_state_not_shown: ProgressStateNotShown => "WS-DLV-2", ["states-are-visible-in-order"];
    skips_sent_state: SkipsSentState => "WS-DLV-2", ["states-are-visible-in-order"];
    progress_state_reset_on_reconnect: ProgressStateResetOnReconnect => "WS-DLV-4", ["progress-state-survives-reconnect"];
    progress_command_goes_dead: ProgressCommandGoesDead => "WS-DLV-4", ["progress-command-with-attempts-used-is-not-dead"];
    progress_buried_at_ack_deadline: ProgressBuriedAtAckDeadline => "WS-DLV-4", ["progress-command-with-attempts-used-is-not-dead"; "progress-state-survives-reconnect"];
    progress_state_never_expires: ProgressStateNeverExpires => "WS-DLV-7", ["progress-state-expires-at-ttl"];
    dead_never_marked: DeadNeverMarked => "WS-DLV-3", ["dead-after-max-attempts"];
    synced_never_dead: SyncedNeverDead => "WS-DLV-5", ["a-command-fetched-only-by-sync-goes-dead"; "sync-redelivers-after-ack-timeout"];
    stack_trace_in_errors: StackTraceInErrors => "WS-HTTP-4", ["http-errors-carry-no-trace-or-secret"; "http-errors-are-json"];
    error_echoes_headers: ErrorEchoesHeaders => "WS-HTTP-4", ["http-errors-carry-no-trace-or-secret"; "http-errors-are-json"];
    metrics_as_json: MetricsAsJson => "WS-OBS-1", ["metrics-are-prometheus-text"];
    metrics_without_reconnects: MetricsWithoutReconnects => "WS-OBS-1", ["metrics-are-prometheus-text"; "metrics-count-what-happens"];
    spec_log_lines_missing: SpecLogLinesMissing => "WS-OBS-1", ["spec-log-lines"];
    metrics_never_move: MetricsNeverMove => "WS-OBS-1", ["metrics-count-what-happens"; "metrics-are-prometheus-text"];
    acks_not_counted: AcksNotCounted => "WS-OBS-1", ["metrics-count-what-happens"];
    replaced_counted_as_normal: ReplacedCountedAsNormal => "WS-OBS-1", ["metrics-count-under-the-right-label"; "metrics-count-what-happens"];
    failed_counted_as_completed: FailedCountedAsCompleted => "WS-OBS-1", ["metrics-count-under-the-right-label"; "metrics-count-what-happens"];
    failed_acks_uncounted: FailedAcksUncounted => "WS-OBS-1", ["metrics-count-under-the-right-label"; "metrics-count-what-happens"];
    http_deliveries_counted_as_ws: HttpDeliveriesCountedAsWs => "WS-OBS-1", ["metrics-count-under-the-right-label"; "metrics-count-what-happens"];
    timestamps_without_zone: TimestampsWithoutZone => "WS-CMD-1", ["timestamps-say-their-zone-and-are-now"; "ttl-gives-expires_at-and-other-types-pass"];
    created_at_restamped: CreatedAtRestamped => "WS-CMD-1", ["created_at-stays-on-every-delivery"; "command-is-pushed-with-its-fields"];
    local_time_marked_z: LocalTimeMarkedZ => "WS-CMD-1", ["timestamps-say-their-zone-and-are-now"; "ttl-gives-expires_at-and-other-types-pass"];
    repeated_ack_counted_twice: RepeatedAckCountedTwice => "WS-ACK-3", ["repeated-ack-counted-once"; "acks-are-idempotent"];
    failed_not_final: FailedNotFinal => "WS-ACK-3", ["failed-is-final"; "acks-are-idempotent"];
    ack_data_not_object_crashes: AckDataNotObjectCrashes => "WS-ERR-1", ["malformed-ack-data-is-invalid_message"; "bad-data-is-invalid_message"];
    command_post_open: CommandPostOpen => "WS-API-1", ["every-api-route-needs-the-admin-token"; "no-or-wrong-token-does-not-open-the-api"];
    reprovision_drops_queue: ReprovisionDropsQueue => "WS-DLV-6", ["reprovisioning-keeps-the-agent"];
    http_tokens_not_verified: HttpTokensNotVerified => "WS-AUTH-5", ["http-endpoints-verify-agent-tokens"; "forged-token-refused"];
    header_overrides_agent_token: HeaderOverridesAgentToken => "WS-HTTP-2", ["agent-id-header-never-overrides-an-agent-token"; "http-ack-of-another-agents-command-is-404"];
    http_compat_ack_fails: HttpCompatAckFails => "WS-HTTP-2", ["http-ack-takes-the-compat-dialect"; "http-ack-alias"];
    registration_token_optional: RegistrationTokenOptional => "WS-HTTP-3", ["register-without-a-token-is-refused"; "register-with-wrong-token-is-401"];
    reregistration_token_useless: ReregistrationTokenUseless => "WS-HTTP-3", ["register-is-idempotent-per-phone"; "register-with-wrong-token-is-401"];
    ping_limit_per_socket: PingLimitPerSocket => "WS-RATE-3", ["ping-limit-is-per-agent-not-per-socket"; "extra-pings-get-rate_limited"];
    ping_limit_per_address: PingLimitPerAddress => "WS-RATE-3", ["limits-are-per-agent-not-per-address"; "extra-pings-get-rate_limited"];
    rate_limited_ping_also_ponged: RateLimitedPingAlsoPonged => "WS-RATE-3", ["extra-pings-get-rate_limited"];
    message_limit_per_socket: MessageLimitPerSocket => "WS-RATE-2", ["message-limit-is-per-agent-not-per-socket"; "messages-past-the-limit-get-rate_limited"];
    resorts_parameters_when_repushed: ResortsParametersWhenRepushed => "WS-CMD-2", ["every-delivery-relays-the-command-as-posted"; "parameters-relayed-as-posted"];
    sent_first_at_connect: SentFirstAtConnect => "WS-DLV-4", ["reconnect-orders-sent-and-queued-together"; "pending-pushed-on-reconnect-in-priority-order"];
    failed_repushed_on_reconnect: FailedRepushedOnReconnect => "WS-DLV-4", ["final-commands-are-never-delivered-again"];
    repeated_id_requeues: RepeatedIdRequeues => "WS-API-2", ["repeated-command-id-never-runs-twice"; "command-id-is-idempotent"];
    repeat_resets_in_flight: RepeatResetsInFlight => "WS-API-2", ["a-repeated-command-id-in-flight-changes-nothing"; "repeated-command-id-never-runs-twice", "command-id-is-idempotent"];
    refused_upgrade_kicks_live: RefusedUpgradeKicksLive => "WS-CONN-2", ["refused-upgrade-never-replaces-the-live-socket"; "duplicate-closes-old-with-4000"];
    status_filter_ignored: StatusFilterIgnored => "WS-API-4", ["command-list-filters-by-status"; "expired-listable-and-retryable"];
    connected_filter_ignored: ConnectedFilterIgnored => "WS-CONN-1", ["connected-list-holds-exactly-the-connected"];
    connected_list_from_last_seen: ConnectedListFromLastSeen => "WS-CONN-1", ["connected-list-holds-exactly-the-connected"];
    connected_list_has_never_connected: ConnectedListHasNeverConnected => "WS-CONN-1", ["connected-list-holds-exactly-the-connected"];
    connected_list_from_registry: ConnectedListFromRegistry => "WS-CONN-1", ["connected-list-holds-exactly-the-connected"];
    prefix_secret_accepted: PrefixSecretAccepted => "WS-AUTH-5", ["a-truncated-secret-is-refused"];
    prefix_admin_accepted: PrefixAdminAccepted => "WS-API-1", ["no-or-wrong-token-does-not-open-the-api"];
    prefix_signature_accepted: PrefixSignatureAccepted => "WS-AUTH-5", ["a-truncated-signature-is-refused"; "http-endpoints-verify-agent-tokens"];
    agent_ids_case_insensitive: AgentIdsCaseInsensitive => "WS-AUTH-4", ["agent-ids-are-case-sensitive"; "unknown-agent-refused"];
    only_first_extra_answered: OnlyFirstExtraAnswered => "WS-RATE-3", ["extra-pings-get-rate_limited", "messages-past-the-limit-get-rate_limited"];
    ping_window_never_passes: PingWindowNeverPasses => "WS-RATE-3", ["the-ping-window-passes"; "ping-gets-pong"];
    expired_sent_redelivered: ExpiredSentRedelivered => "WS-DLV-7", ["a-sent-command-that-expires-is-not-pushed-again"];
    final_ack_restamps: FinalAckRestamps => "WS-ACK-3", ["acks-are-idempotent"];
    welcome_only_on_first_socket: WelcomeOnlyOnFirstSocket => "WS-MSG-1", ["connected-comes-first-on-every-socket"; "connected-comes-first"];
    replaced_disconnect_not_recorded: ReplacedDisconnectNotRecorded => "WS-CONN-6", ["history-records-a-replaced-socket"; "history-is-readable"];
    status_kept_with_socket: StatusKeptWithSocket => "WS-STATUS-1", ["status-outlives-the-socket"; "status-is-stored"];
    register_hands_out_shared_secret: RegisterHandsOutSharedSecret => "WS-HTTP-3", ["a-registered-token-opens-only-its-agent"; "register-is-idempotent-per-phone"];
    ack_without_outcome_completes: AckWithoutOutcomeCompletes => "WS-ACK-1", ["an-ack-without-an-outcome-changes-nothing"];
    progress_moves_back: ProgressMovesBack => "WS-DLV-2", ["progress-never-moves-back"; "states-are-visible-in-order"];
    id_syntax_no_dots: IdSyntaxNoDots => "WS-AUTH-3", ["ids-take-dots-and-underscores-and-only-ascii"];
    id_syntax_unicode: IdSyntaxUnicode => "WS-AUTH-3", ["ids-take-dots-and-underscores-and-only-ascii"; "invalid-agent-id-is-400"];
    only_first_socket_gets_1012: OnlyFirstSocketGets1012 => "WS-CONN-5", ["restart-closes-1012"];
    received_ack_leaves_timer: ReceivedAckLeavesTimer => "WS-ACK-2", ["progress-ack-stops-redelivery"];
    http_progress_ack_leaves_timer: HttpProgressAckLeavesTimer => "WS-HTTP-2", ["an-http-progress-ack-stops-the-socket-redelivery"; "http-ack-completes", "progress-ack-stops-redelivery", "every-final-ack-stops-redelivery"];
    rate_limited_upgrade_is_text: RateLimitedUpgradeIsText => "WS-HTTP-4", ["rate-limited-upgrade-is-json"; "connection-attempts-per-agent-limited"];
    upgrade_errors_not_json: UpgradeErrorsNotJson => "WS-AUTH-2", ["every-refused-upgrade-is-json"];
    missing_token_is_bearer_detail: MissingTokenIsBearerDetail => "WS-AUTH-2", ["every-refused-upgrade-is-json"; "missing-token-refused"];
    shared_secret_ack_skips_owner: SharedSecretAckSkipsOwner => "WS-HTTP-2", ["http-ack-with-the-shared-secret-checks-the-owner"; "http-ack-with-shared-secret-needs-agent-id"];
    reconnects_never_counted: ReconnectsNeverCounted => "WS-OBS-1", ["metrics-count-what-happens"];
    pings_never_counted: PingsNeverCounted => "WS-OBS-1", ["metrics-count-what-happens"];
    connection_failures_never_counted: ConnectionFailuresNeverCounted => "WS-OBS-1", ["metrics-count-what-happens"];
    normal_disconnects_uncounted: NormalDisconnectsUncounted => "WS-OBS-1", ["metrics-count-what-happens"];
    gauge_keeps_replaced_sockets: GaugeKeepsReplacedSockets => "WS-OBS-1", ["active-connections-gauge-follows-the-sockets"];
    gauge_keeps_timed_out_sockets: GaugeKeepsTimedOutSockets => "WS-OBS-1", ["timed-out-socket-leaves-the-active-gauge"];
    gauge_never_falls: GaugeNeverFalls => "WS-OBS-1", ["active-connections-gauge-follows-the-sockets", "timed-out-socket-leaves-the-active-gauge"];
    gauge_counts_refused_upgrades: GaugeCountsRefusedUpgrades => "WS-OBS-1", ["active-connections-gauge-follows-the-sockets"];
    gauge_never_moves: GaugeNeverMoves => "WS-OBS-1", ["active-connections-gauge-follows-the-sockets", "timed-out-socket-leaves-the-active-gauge"];
    close_reasons_left_out: CloseReasonsLeftOut => "WS-CONN-2", ["duplicate-closes-old-with-4000"; "ping-timeout-closes-4008"];
    repeat_answer_made_up: RepeatAnswerMadeUp => "WS-API-2", ["command-id-is-idempotent"; "repeated-command-id-never-runs-twice"];
    retry_unknown_is_409: RetryUnknownIs409 => "WS-HTTP-4", ["unknown-agent-or-command-is-404-on-every-route"];
    unknown_agent_list_empty: UnknownAgentListEmpty => "WS-HTTP-4", ["unknown-agent-or-command-is-404-on-every-route"];
    unknown_agent_config_accepted: UnknownAgentConfigAccepted => "WS-HTTP-4", ["unknown-agent-or-command-is-404-on-every-route"];
    expired_counted_pending: ExpiredCountedPending => "WS-DLV-7", ["ttl-expires-and-is-never-sent"; "progress-ack-keeps-command-pending"];
    immediate_relayed_as_is: ImmediateRelayedAsIs => "WS-CMD-1", ["priority-defaults-and-compat"];
    sync_command_data_partial: SyncCommandDataPartial => "WS-HTTP-1", ["sync-returns-pending-commands"; "sync-relays-parameters-as-posted"];
    sync_refuses_shared_secret: SyncRefusesSharedSecret => "WS-HTTP-1", ["sync-takes-the-shared-secret"; "sync-returns-pending-commands"];
    sync_queued_before_due: SyncQueuedBeforeDue => "WS-DLV-5", ["sync-orders-queued-and-due-together"];
    sync_newest_first_within_priority: SyncNewestFirstWithinPriority => "WS-DLV-5", ["sync-orders-queued-and-due-together"];
    sync_skips_socket_pushed: SyncSkipsSocketPushed => "WS-DLV-5", ["sync-returns-what-the-socket-left-due"; "sync-redelivers-after-ack-timeout"];
    unknown_agent_command_accepted: UnknownAgentCommandAccepted => "WS-API-2", ["command-for-an-unknown-agent-is-404"];
    router_404_is_text: Router404IsText => "WS-HTTP-4", ["http-errors-are-json"];
    extractor_rejection_is_text: ExtractorRejectionIsText => "WS-HTTP-4", ["http-errors-are-json"];
    ghost_connection_after_crash: GhostConnectionAfterCrash => "WS-CONN-1", ["a-crash-leaves-no-ghost-connection"];
    attempts_spent_offline: AttemptsSpentOffline => "WS-DLV-3", ["no-attempts-are-spent-while-offline"];
    ttl_lost_on_restart: TtlLostOnRestart => "WS-DLV-7", ["ttl-outlives-a-restart"; "ttl-expires-and-is-never-sent"];
    final_commands_expire_at_ttl: FinalCommandsExpireAtTtl => "WS-DLV-7", ["a-final-command-outlives-its-ttl"];
    ttl_restarts_on_push: TtlRestartsOnPush => "WS-DLV-7", ["ttl-counts-from-created_at-not-the-last-push"; "ttl-expires-and-is-never-sent"];
    synced_not_pushed_on_connect: SyncedNotPushedOnConnect => "WS-DLV-4", ["synced-command-is-pushed-on-connect"];
    retry_not_pushed_live: RetryNotPushedLive => "WS-API-4", ["retry-pushes-to-a-connected-agent"; "expired-listable-and-retryable"];
    retry_final_commands: RetryFinalCommands => "WS-API-4", ["retry-is-only-for-dead-or-expired"; "expired-listable-and-retryable"];
    only_unauthorized_counted: OnlyUnauthorizedCounted => "WS-RATE-1", ["bad-requests-count-toward-the-address-limit"; "refused-upgrades-limited-per-address"];
    unknown_agents_not_counted: UnknownAgentsNotCounted => "WS-RATE-1", ["unknown-agents-count-toward-the-address-limit"];
    frame_limit_16_kib: FrameLimit16KiB => "WS-ERR-1", ["a-frame-under-the-limit-is-taken"; "oversized-frame-closes-1009"];
    frame_limit_64000: FrameLimit64000 => "WS-ERR-1", ["the-frame-limit-is-exactly-64-kib"; "a-frame-under-the-limit-is-taken", "oversized-frame-closes-1009"];
    close_not_removed_at_once: CloseNotRemovedAtOnce => "WS-CONN-4", ["normal-close-removes-at-once"];
    history_without_remote_addr: HistoryWithoutRemoteAddr => "WS-CONN-6", ["history-is-readable"];
    history_without_disconnects: HistoryWithoutDisconnects => "WS-CONN-6", ["history-is-readable"];
    history_times_without_zone: HistoryTimesWithoutZone => "WS-CONN-6", ["history-is-readable"];
    error_close_recorded_as_normal: ErrorCloseRecordedAsNormal => "WS-CONN-6", ["an-error-close-is-recorded-as-error"; "history-is-readable"];
    normal_close_recorded_as_error: NormalCloseRecordedAsError => "WS-CONN-4", ["normal-close-recorded-as-normal"; "normal-close-removes-at-once"];

    // ---- agent → server frames ----
    crashes_on_bad_json: CrashesOnBadJson => "WS-ERR-1", ["not-json-is-invalid_json"];
    binary_closes_socket: BinaryClosesSocket => "WS-ERR-1", ["binary-frame-is-unsupported_frame"];
    ignores_acks: IgnoresAcks => "WS-ACK-2", ["spec-ack-completes", "spec-ack-failure-fails"];
    failure_ack_completes: FailureAckCompletes => "WS-ACK-2", ["spec-ack-failure-fails"; "spec-ack-completes"];
    ack_error_dropped: AckErrorDropped => "WS-ACK-2", ["spec-ack-failure-fails"];
    progress_ack_completes: ProgressAckCompletes => "WS-ACK-2", ["progress-ack-keeps-command-pending"];
    ack_needs_timestamp: AckNeedsTimestamp => "WS-ACK-1", ["compat-ack-dialect"; "unknown-command-ack-is-unknown_command"];
    null_error_refused: NullErrorRefused => "WS-ACK-2", ["spec-ack-completes"; "spec-ack-failure-fails"];
    final_ack_leaves_timer: FinalAckLeavesTimer => "WS-DLV-3", ["every-final-ack-stops-redelivery"; "progress-ack-stops-redelivery"];
    last_attempt_ack_ignored: LastAttemptAckIgnored => "WS-DLV-3", ["the-last-attempt-can-still-be-acked"; "dead-after-max-attempts"];
    last_attempt_stranded_on_close: LastAttemptStrandedOnClose => "WS-DLV-3", ["a-last-attempt-cut-off-still-goes-dead"; "dead-after-max-attempts"];
    compat_ack_ignored: CompatAckIgnored => "WS-ACK-1", ["compat-ack-dialect"];
    progress_ack_ignored: ProgressAckIgnored => "WS-ACK-2", ["progress-ack-stops-redelivery"];
    progress_cannot_fail: ProgressCannotFail => "WS-DLV-2", ["progress-states-end-either-way"; "states-are-visible-in-order"];
    status_not_stored: StatusNotStored => "WS-STATUS-1", ["status-is-stored"];
    sync_status_ignored: SyncStatusIgnored => "WS-STATUS-1", ["sync-status-is-stored"; "status-is-stored"];
    sync_clears_status: SyncClearsStatus => "WS-STATUS-1", ["a-sync-without-status-keeps-the-last"; "sync-status-is-stored"];
    bad_input_kills_all_sockets: BadInputKillsAllSockets => "WS-ERR-2", ["bad-input-never-affects-another-agent"];
    only_ping_messages_count: OnlyPingMessagesCount => "WS-CONN-3", ["any-frame-keeps-the-socket-alive"];
    times_out_at_ping_interval: TimesOutAtPingInterval => "WS-DLV-8", ["ping-timeout-close-is-not-early"];

    // ---- server → agent frames ----
    no_welcome: NoWelcome => "WS-MSG-1", ["connected-comes-first"];
    welcome_without_timers: WelcomeWithoutTimers => "WS-MSG-1", ["connected-comes-first"];
    pending_before_welcome: PendingBeforeWelcome => "WS-MSG-1", ["connected-comes-before-pending-commands"; "connected-comes-first"];
    ws_pings_not_counted: WsPingsNotCounted => "WS-CONN-3", ["websocket-pings-keep-the-socket-alive"];
    no_expires_at: NoExpiresAt => "WS-CMD-1", ["ttl-gives-expires_at-and-other-types-pass"; "command-is-pushed-with-its-fields"];
    expires_at_is_created_at: ExpiresAtIsCreatedAt => "WS-CMD-1", ["ttl-gives-expires_at-and-other-types-pass"; "command-is-pushed-with-its-fields"];
    pong_loses_payload: PongLosesPayload => "WS-CONN-3", ["websocket-ping-gets-its-pong"; "websocket-pings-keep-the-socket-alive"];
    welcome_wrong_agent_id: WelcomeWrongAgentId => "WS-MSG-1", ["connected-comes-first"];
    error_without_message: ErrorWithoutMessage => "WS-ERR-1", ["not-json-is-invalid_json"];
    welcome_version_as_number: WelcomeVersionAsNumber => "WS-MSG-1", ["connected-comes-first"];
    no_pong: NoPong => "WS-PING-1", ["ping-gets-pong"];
    no_ping_rate_limit: NoPingRateLimit => "WS-RATE-3", ["extra-pings-get-rate_limited"];
    no_message_rate_limit: NoMessageRateLimit => "WS-RATE-2", ["messages-past-the-limit-get-rate_limited"];
    rate_limit_closes_socket: RateLimitClosesSocket => "WS-RATE-2", ["messages-past-the-limit-get-rate_limited"; "rate-limits-never-stop-delivery"];
    rate_limit_stops_delivery: RateLimitStopsDelivery => "WS-RATE-2", ["rate-limits-never-stop-delivery"];
    one_error_code_for_all: OneErrorCodeForAll => "WS-ERR-1", ["not-json-is-invalid_json", "unknown-type-is-unknown_type", "binary-frame-is-unsupported_frame"];
    unknown_type_closes_socket: UnknownTypeClosesSocket => "WS-ERR-1", ["unknown-type-is-unknown_type"];
    silent_on_unknown_ack: SilentOnUnknownAck => "WS-ACK-3", ["unknown-command-ack-is-unknown_command"];
    unknown_ack_is_not_found: UnknownAckIsNotFound => "WS-ACK-3", ["unknown-command-ack-is-unknown_command", "foreign-command-ack-is-unknown_command"];
    foreign_ack_is_forbidden: ForeignAckIsForbidden => "WS-ACK-3", ["foreign-command-ack-is-unknown_command"; "unknown-command-ack-is-unknown_command"];
    non_object_json_closes_1011: NonObjectJsonCloses1011 => "WS-ERR-1", ["json-that-is-no-object-is-invalid_message"];
    non_object_json_is_invalid_json: NonObjectJsonIsInvalidJson => "WS-ERR-1", ["json-that-is-no-object-is-invalid_message"];
    status_data_not_checked: StatusDataNotChecked => "WS-ERR-1", ["json-that-is-no-object-is-invalid_message"];
    no_string_type_is_unknown_type: NoStringTypeIsUnknownType => "WS-ERR-1", ["no-string-type-is-invalid_message"; "unknown-type-is-unknown_type"];
    bad_data_ignored: BadDataIgnored => "WS-ERR-1", ["bad-data-is-invalid_message"];
    extra_pings_dropped: ExtraPingsDropped => "WS-RATE-3", ["extra-pings-get-rate_limited"];
    extra_messages_processed: ExtraMessagesProcessed => "WS-RATE-2", ["messages-past-the-limit-are-ignored"; "messages-past-the-limit-get-rate_limited"];
    control_frames_counted: ControlFramesCounted => "WS-RATE-2", ["control-frames-are-not-counted"; "messages-past-the-limit-get-rate_limited"];
    binary_not_counted: BinaryNotCounted => "WS-RATE-2", ["binary-messages-are-counted"; "messages-past-the-limit-get-rate_limited"];
    foreign_ack_accepted: ForeignAckAccepted => "WS-ACK-3", ["foreign-command-ack-is-unknown_command"];
    foreign_in_flight_ack_accepted: ForeignInFlightAckAccepted => "WS-ACK-3", ["an-in-flight-command-of-another-agent-is-unknown"];
    final_check_before_owner: FinalCheckBeforeOwner => "WS-ACK-3", ["a-finished-command-of-another-agent-is-unknown"; "foreign-command-ack-is-unknown_command", "acks-are-idempotent"];
    foreign_ack_cancels_timer: ForeignAckCancelsTimer => "WS-ACK-3", ["a-foreign-ack-leaves-the-owners-redelivery"; "an-in-flight-command-of-another-agent-is-unknown"];
    drops_queued_commands: DropsQueuedCommands => "WS-DLV-1", ["offline-command-waits-for-the-agent"];
    never_redelivers: NeverRedelivers => "WS-DLV-3", ["unacked-command-redelivered-with-backoff"];
    backoff_too_long: BackoffTooLong => "WS-DLV-3", ["unacked-command-redelivered-with-backoff"];
    wrong_priority_order: WrongPriorityOrder => "WS-DLV-4", ["pending-pushed-on-reconnect-in-priority-order"];
    ignores_priority: IgnoresPriority => "WS-DLV-4", ["pending-pushed-on-reconnect-in-priority-order"];
    priority_sorted_by_name: PrioritySortedByName => "WS-DLV-4", ["pending-pushed-on-reconnect-in-priority-order"];
    lifo_within_priority: LifoWithinPriority => "WS-DLV-4", ["pending-pushed-on-reconnect-in-priority-order"];
    fifo_ties_by_command_id: FifoTiesByCommandId => "WS-DLV-4", ["fifo-within-a-priority-is-posting-order-not-id-order"; "pending-pushed-on-reconnect-in-priority-order"];
    replaced_cleanup_cancels_timer: ReplacedCleanupCancelsTimer => "WS-DLV-3", ["a-replacing-socket-keeps-redelivering"];
    stale_timer_after_reconnect: StaleTimerAfterReconnect => "WS-DLV-3", ["a-reconnect-restarts-the-redelivery-timer"; "unacked-command-repushed-on-reconnect"];
    unacked_not_repushed: UnackedNotRepushed => "WS-DLV-4", ["unacked-command-repushed-on-reconnect"];
    progress_not_repushed: ProgressNotRepushed => "WS-DLV-4", ["progress-state-survives-reconnect"];
    takeover_repushes_sent_only: TakeoverRepushesSentOnly => "WS-CONN-2", ["duplicate-replaces-old-and-redelivers"; "progress-state-survives-reconnect"];
    one_attempt_too_few: OneAttemptTooFew => "WS-DLV-3", ["dead-after-max-attempts"];
    reconnect_push_not_counted: ReconnectPushNotCounted => "WS-DLV-4", ["unacked-command-repushed-on-reconnect"];
    attempt_starts_at_zero: AttemptStartsAtZero => "WS-CMD-1", ["command-is-pushed-with-its-fields"];
    priority_as_number: PriorityAsNumber => "WS-CMD-1", ["command-is-pushed-with-its-fields"];
    created_at_as_epoch: CreatedAtAsEpoch => "WS-CMD-1", ["command-is-pushed-with-its-fields"];
    created_at_http_date: CreatedAtHttpDate => "WS-CMD-1", ["command-is-pushed-with-its-fields"];
    parameters_as_string: ParametersAsString => "WS-CMD-1", ["command-is-pushed-with-its-fields"];
    camel_case_command_fields: CamelCaseCommandFields => "WS-CMD-1", ["command-is-pushed-with-its-fields"];
    resorts_parameter_keys: ResortsParameterKeys => "WS-CMD-2", ["parameters-relayed-as-posted"];
    resorts_payload_keys: ResortsPayloadKeys => "WS-CMD-1", ["payload-copies-parameters"; "parameters-relayed-as-posted"];
    integer_keys_first: IntegerKeysFirst => "WS-CMD-2", ["parameters-relayed-as-posted"];
    rounds_numbers_to_double: RoundsNumbersToDouble => "WS-CMD-2", ["parameters-relayed-as-posted"];
    no_payload_copy: NoPayloadCopy => "WS-CMD-1", ["payload-copies-parameters"; "command-is-pushed-with-its-fields"];
    one_attempt_too_many: OneAttemptTooMany => "WS-DLV-3", ["dead-after-max-attempts"];
    config_update_wrapped: ConfigUpdateWrapped => "WS-CFG-1", ["config-update-pushed"];
    config_not_pushed: ConfigNotPushed => "WS-CFG-1", ["config-update-pushed"];
    resorts_config_keys: ResortsConfigKeys => "WS-CMD-2", ["config-relayed-as-posted"];
    keeps_old_socket: KeepsOldSocket => "WS-CONN-2", ["duplicate-replaces-old-and-redelivers", "duplicate-closes-old-with-4000", "one-live-connection-per-agent"];
    replaced_cleanup_unregisters_new: ReplacedCleanupUnregistersNew => "WS-CONN-1", ["one-live-connection-per-agent"];
    replaced_closes_with_1000: ReplacedClosesWith1000 => "WS-CONN-2", ["duplicate-closes-old-with-4000"; "duplicate-replaces-old-and-redelivers"];
    never_times_out: NeverTimesOut => "WS-CONN-3", ["silent-agent-is-closed", "ping-timeout-closes-4008"];
    replaced_cleanup_clears_idle_timer: ReplacedCleanupClearsIdleTimer => "WS-CONN-3", ["a-replacing-socket-still-times-out"; "silent-agent-is-closed"];
    ping_timeout_closes_1001: PingTimeoutCloses1001 => "WS-CONN-3", ["ping-timeout-closes-4008"; "silent-agent-is-closed"];
    times_out_too_late: TimesOutTooLate => "WS-CONN-3", ["silent-agent-is-closed"];
    shutdown_closes_1001: ShutdownCloses1001 => "WS-CONN-5", ["restart-closes-1012"];
    shutdown_drops_sockets: ShutdownDropsSockets => "WS-CONN-5", ["restart-closes-1012"];
    protocol_error_no_close_frame: ProtocolErrorNoCloseFrame => "WS-ERR-1", ["protocol-error-closes-1002"];
    replacement_loses_in_flight: ReplacementLosesInFlight => "WS-CONN-2", ["duplicate-replaces-old-and-redelivers"; "duplicate-closes-old-with-4000"];
    queue_in_memory: QueueInMemory => "WS-CONN-5", ["queued-commands-survive-restart"];
    in_flight_lost_on_restart: InFlightLostOnRestart => "WS-DLV-6", ["unacked-command-survives-a-restart"];
    accepted_before_durable: AcceptedBeforeDurable => "WS-DLV-6", ["accepted-commands-survive-a-crash", "in-flight-command-survives-a-crash"];
    in_flight_lost_on_crash: InFlightLostOnCrash => "WS-DLV-6", ["in-flight-command-survives-a-crash"; "accepted-commands-survive-a-crash", "unacked-command-survives-a-restart"];
    ack_written_behind: AckWrittenBehind => "WS-ACK-3", ["answered-ack-survives-a-crash"];
    oversize_closes_1011: OversizeCloses1011 => "WS-ERR-1", ["oversized-frame-closes-1009"];
    bad_utf8_closes_1002: BadUtf8Closes1002 => "WS-ERR-1", ["invalid-utf8-closes-1007"];
}

/// The embedded edge-server (short timers, spec rate limits) and a target
/// that reaches it through a proxy injecting `fault`.
async fn backend(fault: Fault, setup: Setup) -> (Embedded, Target) {
    let registration = setup != Setup::NoRegistration;
    let server = Embedded::start(|c| {
        if !registration {
            c.registration_token = None;
        }
        if fault == Fault::SpecLogLinesMissing {
            c.log_level = "warn".into();
        }
    })
    .await
    .unwrap();
    let secrets = Secrets {
        edge: embedded::EDGE_SECRET.into(),
        admin: embedded::ADMIN_TOKEN.into(),
        registration: embedded::REGISTRATION_TOKEN.into(),
    };
    let Lifecycle {
        restart,
        crash,
        log,
    } = server.lifecycle();
    let proxy = proxy::start(server.addr, fault, secrets, log.clone()).await;
    let mut target = Target::new(&format!("http://{}", proxy.addr)).unwrap();
    target.edge_secret = Some(embedded::EDGE_SECRET.into());
    target.admin_token = Some(embedded::ADMIN_TOKEN.into());
    target.registration_token = registration.then(|| embedded::REGISTRATION_TOKEN.into());
    target.registration_disabled = !registration;
    // The proxy hears of a restart or a crash (it sees none while no
    // socket is open).
    target.server_log = log;
    let handle = proxy.clone();
    target.restarter = Some(Arc::new(move || {
        handle.restarting();
        restart()
    }));
    target.crasher = Some(Arc::new(move || {
        proxy.crashing();
        crash()
    }));
    (server, target)
}

async fn run_against(fault: Fault, setup: Setup, checks: &[&str]) -> RunReport {
    let (server, target) = backend(fault, setup).await;
    // As `conform` does: the timers from a probe agent's `connected`.
    conform::learn_timings(&target).await;
    let options = Options {
        only: checks.iter().map(|s| s.to_string()).collect(),
        strict: true,
        // The transparent run retries timing checks, as CI does; a broken
        // run need not (a retry could only hide the fault).
        retries: u32::from(fault == Fault::None),
        // The checks that wait out a rate-limit window run too.
        slow: true,
        seed: 7,
        ..Options::default()
    };
    let report = conform::run(&suite::builtin().unwrap(), &target, &options, "proxy").await;
    server.stop().await;
    report
}

fn summary(report: &RunReport) -> Vec<String> {
    report
        .results
        .iter()
        .map(|r| {
            format!(
                "{} {} {:?} expected {:?} observed {:?}",
                r.rule, r.name, r.status, r.expected, r.observed
            )
        })
        .collect()
}

/// `WS-AUTH-1` → `WS-AUTH`.
fn family(rule: &str) -> &str {
    rule.rsplit_once('-').map_or(rule, |(family, _)| family)
}

async fn assert_caught(fault: Fault) {
    let case = CASES
        .iter()
        .find(|c| c.fault == fault)
        .expect("in the table");
    let checks: Vec<&str> = case.checks().collect();
    let report = run_against(fault, case.setup, &checks).await;
    let all = summary(&report);
    // EDGE_FAULT_REPORT=1 (with --no-capture) shows what each check saw.
    if std::env::var_os("EDGE_FAULT_REPORT").is_some() {
        eprintln!("{fault:?}: {all:#?}");
    }
    for (n, name) in case.fails.iter().enumerate() {
        let result = report.results.iter().find(|r| &r.name == name);
        let rule_ok = |rule: &str| {
            if n == 0 {
                rule == case.rule
            } else {
                family(rule) == family(case.rule)
            }
        };
        assert!(
            result.is_some_and(|r| r.status == Status::Fail && rule_ok(&r.rule)),
            "{fault:?} should fail `{name}` ({}): {all:#?}",
            case.rule
        );
    }
    let strays: Vec<String> = report
        .results
        .iter()
        .filter(|r| r.status == Status::Fail && family(&r.rule) != family(case.rule))
        .map(|r| format!("{} {}", r.rule, r.name))
        .collect();
    assert!(
        strays.is_empty(),
        "{fault:?} breaks {} but also fails {strays:?}: {all:#?}",
        case.rule
    );
}

/// Every check the table uses passes through the transparent proxy, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_checks_used_pass_through_the_transparent_proxy() {
    let used: BTreeSet<&str> = CASES.iter().flat_map(Case::checks).collect();
    let suite: BTreeSet<String> = suite::builtin()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    let missing: Vec<&&str> = used.iter().filter(|n| !suite.contains(**n)).collect();
    assert!(missing.is_empty(), "not in the suite: {missing:?}");
    let distinct: BTreeSet<String> = CASES.iter().map(|c| format!("{:?}", c.fault)).collect();
    assert_eq!(distinct.len(), CASES.len(), "one row per fault");
    // Once per server setup, every check the rows of that setup use.
    let setups: BTreeSet<Setup> = CASES.iter().map(|c| c.setup).collect();
    let mut results = Vec::new();
    for setup in setups {
        let checks: BTreeSet<&str> = CASES
            .iter()
            .filter(|c| c.setup == setup)
            .flat_map(Case::checks)
            .collect();
        let checks: Vec<&str> = checks.into_iter().collect();
        let report = run_against(Fault::None, setup, &checks).await;
        assert_eq!(
            report.results.len(),
            checks.len(),
            "{setup:?}: {:#?}",
            summary(&report)
        );
        results.extend(report.results);
    }
    let not_passed: Vec<String> = results
        .iter()
        .filter(|r| r.status != Status::Pass)
        .map(|r| format!("{} {} {:?} {:?}", r.rule, r.name, r.status, r.observed))
        .collect();
    assert!(
        not_passed.is_empty(),
        "through a transparent proxy: {not_passed:#?}"
    );
}

/// The fuzz group catches a backend that falls over on garbage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_group_catches_a_crash_on_bad_json() {
    for (fault, should_pass) in [(Fault::None, true), (Fault::CrashesOnBadJson, false)] {
        let (server, target) = backend(fault, Setup::Default).await;
        let result = edge_harness::fuzz::run(&target, 11, 40).await;
        assert_eq!(
            result.status == Status::Pass,
            should_pass,
            "{fault:?}: {:?} {:?}",
            result.expected,
            result.observed
        );
        server.stop().await;
    }
}

/// The `Fault` enum, the table above and scenarios/MUTATIONS.md agree:
/// every fault has a row here (a fault no row runs proves nothing), names
/// the mutation it plays there, and MUTATIONS.md's summary counts its own
/// rows (it is kept by hand as rows are added). The load tests' faults
/// ([`LOAD_FAULTS`]) are proven in load.rs instead.
#[test]
fn every_fault_is_tested_and_listed_and_the_summary_counts_the_rows() {
    // Every line of the enum's body that starts a variant must be a plain
    // `Name,`: a variant with fields would otherwise be skipped unseen.
    let body = include_str!("proxy/fault.rs")
        .split_once("pub enum Fault {")
        .and_then(|(_, rest)| rest.split_once("\n}"))
        .expect("proxy/fault.rs has `pub enum Fault { … }`")
        .0;
    let variant_lines: Vec<&str> = body
        .lines()
        .filter(|line| {
            let name = line.strip_prefix("    ").unwrap_or("");
            name.starts_with(|c: char| c.is_ascii_uppercase())
        })
        .collect();
    let variants: BTreeSet<&str> = variant_lines
        .iter()
        .filter_map(|line| line.trim().strip_suffix(','))
        .filter(|name| name.chars().all(|c| c.is_ascii_alphanumeric()))
        .collect();
    assert_eq!(
        variants.len(),
        variant_lines.len(),
        "a variant that is not `Name,`: {variant_lines:?}"
    );
    assert!(variants.len() > 200, "read the enum: {variants:?}");
    let variants: BTreeSet<&str> = variants
        .into_iter()
        .filter(|name| *name != "None" && !LOAD_FAULTS.iter().any(|f| format!("{f:?}") == *name))
        .collect();
    let tested: BTreeSet<String> = CASES
        .iter()
        .map(|case| format!("{:?}", case.fault))
        .collect();
    let untested: Vec<&&str> = variants.iter().filter(|v| !tested.contains(**v)).collect();
    assert!(
        untested.is_empty(),
        "faults no row of `faults!` runs: {untested:?}"
    );

    let mutations = include_str!("../../scenarios/MUTATIONS.md");
    let (rows, summary) = mutations
        .split_once("\n## Summary")
        .expect("MUTATIONS.md has a `## Summary`");
    let rows: Vec<Vec<String>> = rows
        .lines()
        .filter(|line| line.starts_with("| ") && !line.starts_with("| mutation |"))
        .map(cells)
        .collect();
    let faults_named: BTreeSet<&str> = rows
        .iter()
        .filter_map(|row| row.get(2)?.strip_prefix('`')?.split('`').next())
        .collect();
    let unlisted: Vec<&&str> = variants.difference(&faults_named).collect();
    assert!(
        unlisted.is_empty(),
        "faults with no row in MUTATIONS.md: {unlisted:?}"
    );
    let unknown: Vec<&&str> = faults_named.difference(&variants).collect();
    assert!(
        unknown.is_empty(),
        "MUTATIONS.md names faults the enum has not: {unknown:?}"
    );
    let not_caught = rows
        .iter()
        .filter(|row| row[1].contains("**not caught**"))
        .count();
    let simulated = rows.iter().filter(|row| row[2].starts_with('`')).count();
    let count = |label: &str| -> String {
        let line = summary
            .lines()
            .find(|line| line.starts_with(&format!("| {label}")))
            .unwrap_or_else(|| panic!("no summary row `{label}`"));
        cells(line)[1].clone()
    };
    assert_eq!(
        count("mutations listed").parse::<usize>().unwrap(),
        rows.len(),
        "rows"
    );
    assert_eq!(
        count("**not caught**").parse::<usize>().unwrap(),
        not_caught,
        "not caught"
    );
    assert_eq!(
        count("simulated by a proxy fault"),
        format!("{simulated} rows, {} distinct faults", faults_named.len()),
        "simulated rows and distinct faults"
    );
}

/// The cells of a markdown table row, trimmed; a `|` inside backticks
/// (`*a*|*b*`) is text, not a border.
fn cells(line: &str) -> Vec<String> {
    let (mut cells, mut cell, mut code) = (Vec::new(), String::new(), false);
    for c in line
        .trim()
        .trim_start_matches('|')
        .trim_end_matches('|')
        .chars()
    {
        match c {
            '`' => {
                code = !code;
                cell.push(c);
            }
            '|' if !code => cells.push(std::mem::take(&mut cell).trim().to_string()),
            _ => cell.push(c),
        }
    }
    cells.push(cell.trim().to_string());
    cells
}
