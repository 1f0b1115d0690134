//! Faults in WebSocket frames: the order of pending commands at connect,
//! agent → server frames and server → agent frames.

use super::*;

impl Proxy {
    /// The order a fault pushes pending commands in at connect.
    pub(super) fn connect_order(&self, commands: &mut [Json]) {
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
            Fault::FifoTiesByCommandId => {
                commands.sort_by_key(|c| (rank(c), field(c, "command_id")))
            }
            Fault::SentFirstAtConnect => commands.sort_by_key(|c| field(c, "attempt") == "1"),
            _ => {}
        }
    }

    pub(super) fn agent_frame(&self, s: &mut Session, message: Message) -> Vec<Act> {
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
        s.not_object = value.as_ref().is_some_and(|v| !v.is_object());
        s.status_not_object =
            kind == "status" && value.as_ref().is_some_and(|v| !v["data"].is_object());
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
        let mut failure_after_progress = false;
        if let Some(ack) = &ack {
            let id = ack["command_id"].as_str().unwrap_or("").to_string();
            let status = match (&ack["success"], ack["status"].as_str()) {
                (Value::Bool(true), _) => "completed".to_string(),
                (Value::Bool(false), _) => "failed".to_string(),
                (_, Some(status)) => status.to_string(),
                _ => String::new(),
            };
            failure_after_progress = self.fault == Fault::ProgressCannotFail
                && status == "failed"
                && self.memory().progress.contains_key(&id);
            if self.fault == Fault::CacheClearedOnAcksOnly {
                self.memory().cached.remove(&id);
            }
            // `progress` holds the commands in a progress state now.
            if status == "received" || status == "executing" {
                self.memory().progress.insert(id.clone(), status.clone());
            } else if !status.is_empty() {
                self.memory().progress.remove(&id);
            }
            if !status.is_empty() {
                s.acked.insert(id.clone());
                if self.fault == Fault::ForeignAckCancelsTimer {
                    let mut memory = self.memory();
                    let foreign = (memory.pushed.iter())
                        .any(|(agent, ids)| *agent != s.agent && ids.contains(&id));
                    if foreign {
                        memory.timer_cancelled.insert(id.clone());
                    }
                }
                if self.fault == Fault::FinalCheckBeforeOwner
                    && (status == "completed" || status == "failed")
                {
                    // Finished by its owner (the agent it was pushed to).
                    let mut memory = self.memory();
                    if memory
                        .pushed
                        .get(&s.agent)
                        .is_some_and(|ids| ids.contains(&id))
                    {
                        memory.final_acked.insert(id.clone());
                    }
                }
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
            Fault::NonObjectJsonCloses1011 if s.not_object => {
                return vec![Act::Close(1011, "internal error")]
            }
            Fault::BadInputKillsAllSockets if not_json => {
                self.crash.send_modify(|n| *n += 1);
                return vec![];
            }
            Fault::BinaryClosesSocket if matches!(message, Message::Binary(_)) => {
                return vec![Act::Close(1003, "unsupported data")]
            }
            Fault::IgnoresAcks if ack.is_some() => return vec![],
            Fault::AckWithoutOutcomeCompletes if ack.as_ref().is_some_and(lacks_outcome) => {
                let id = ack.as_ref().unwrap()["command_id"].clone();
                let completed =
                    json!({"type": "command_ack", "data": {"command_id": id, "success": true}});
                return vec![Act::Server(Message::text(completed.to_string()))];
            }
            Fault::FrameLimit16KiB | Fault::FrameLimit64000 if matches!(&message, Message::Text(text) if text.len() > frame_limit(self.fault)) => {
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
            Fault::FinalAckLeavesTimer | Fault::ReceivedAckLeavesTimer
                if ack.as_ref().is_some_and(|a| match self.fault {
                    Fault::ReceivedAckLeavesTimer => a["status"] == "received",
                    _ => {
                        a["status"] == "completed"
                            || a["status"] == "failed"
                            || a["success"] == false
                    }
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
            Fault::ProgressCannotFail if failure_after_progress => return vec![],
            Fault::StatusNotStored if kind == "status" => return vec![],
            Fault::SyncClearsStatus if kind == "status" => {
                self.memory().status_cleared.remove(&s.agent);
            }
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

    pub(super) fn server_frame(&self, s: &mut Session, message: Message) -> Vec<Act> {
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
                // The replaced socket's cleanup cleared the new one's idle timer.
                (Fault::ReplacedCleanupClearsIdleTimer, 4008)
                    if self.memory().replacing.contains(&s.agent) =>
                {
                    vec![Act::Deafen]
                }
                (Fault::TimesOutTooLate, 4008) => vec![
                    Act::Deafen,
                    Act::AgentAt(Instant::now() + s.ping_timeout, message.clone()),
                ],
                (Fault::ReplacedClosesWith1000, 4000) => replace(1000, ""),
                (Fault::CloseReasonsLeftOut, 4000 | 4008) => replace(code, ""),
                (Fault::GaugeKeepsReplacedSockets, 4000)
                | (Fault::GaugeKeepsTimedOutSockets, 4008) => {
                    self.memory().gauge_kept += 1;
                    vec![Act::Agent(message)]
                }
                (Fault::TimedOutAgentStaysRegistered, 4008) => {
                    self.memory().timed_out.insert(s.agent.clone());
                    vec![Act::Agent(message)]
                }
                (Fault::ReplacedCleanupUnregistersNew, 4000) => {
                    self.memory().unregistered.insert(s.agent.clone());
                    vec![Act::Agent(message)]
                }
                (Fault::OnlyFirstSocketGets1012, 1012) => {
                    let mut memory = self.memory();
                    memory.restart_closes += 1;
                    match memory.restart_closes {
                        1 => vec![Act::Agent(message)],
                        _ => vec![Act::Drop],
                    }
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
        let pushed_here_before = kind == "command" && s.seen.contains(&id);
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
                | Fault::ReceivedAckLeavesTimer
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
        if command && LOAD_FAULTS.contains(&self.fault) {
            let mut memory = self.memory();
            let first = memory.pushed_once.insert(id.clone());
            // The 10th, 20th, … command seen.
            if first && memory.pushed_once.len() / 10 > memory.tenths.len() {
                memory.tenths.insert(id.clone());
            }
            return match (self.fault, memory.tenths.contains(&id)) {
                (Fault::EveryTenthCommandNeverPushed, true) => vec![],
                (Fault::EveryTenthCommandPushedTwice, true) if first => {
                    vec![Act::Agent(message.clone()), Act::Agent(message)]
                }
                (Fault::EveryPushDelayed200ms, _) => {
                    vec![Act::AgentAt(
                        Instant::now() + Duration::from_millis(200),
                        message,
                    )]
                }
                _ => vec![Act::Agent(message)],
            };
        }
        match self.fault {
            Fault::NoWelcome if kind == "connected" => vec![],
            Fault::WelcomeOnlyOnFirstSocket
                if kind == "connected" && !self.memory().welcomed.insert(s.agent.clone()) =>
            {
                vec![]
            }
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
            // The socket's timer for this push (cancelled by a socket ack,
            // or when no HTTP progress ack comes: see the pump).
            Fault::HttpProgressAckLeavesTimer if command => {
                let mut again = Json::parse(&message).unwrap();
                let data = again.get_mut("data").unwrap();
                let attempt = data.get("attempt").and_then(Json::as_u64).unwrap_or(1);
                data.insert("attempt", Json::from(attempt + 1));
                let at = Instant::now() + s.ack_timeout + Timings::backoff(attempt as u32);
                vec![
                    Act::Agent(message),
                    Act::AgentAt(at, Message::text(again.to_text())),
                ]
            }
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
            Fault::NonObjectJsonIsInvalidJson if code == "invalid_message" && s.not_object => {
                edit(&|f| {
                    f.get_mut("data")
                        .unwrap()
                        .insert("code", Json::String("invalid_json".into()))
                })
            }
            Fault::StatusDataNotChecked if code == "invalid_message" && s.status_not_object => {
                vec![]
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
            Fault::ForeignAckAccepted | Fault::ForeignInFlightAckAccepted
                if code == "unknown_command" =>
            {
                // Taken as if the agent owned it: no error, and the state
                // changes. In flight: only a command pushed to another agent.
                let cid = data["ref"].as_str().unwrap_or("").to_string();
                let mut memory = self.memory();
                let taken = match self.fault {
                    Fault::ForeignAckAccepted => memory.created.contains(&cid),
                    _ => (memory.pushed.iter())
                        .any(|(agent, ids)| *agent != s.agent && ids.contains(&cid)),
                };
                if !taken {
                    return vec![Act::Agent(message)];
                }
                memory.last_ack.insert(cid, "completed".into());
                vec![]
            }
            // The "already final" short cut answers before the owner check.
            Fault::FinalCheckBeforeOwner
                if code == "unknown_command"
                    && self
                        .memory()
                        .final_acked
                        .contains(data["ref"].as_str().unwrap_or("")) =>
            {
                vec![]
            }
            // Lost for good: every later delivery of them too.
            Fault::DropsQueuedCommands if command && self.memory().queued.contains(&id) => vec![],
            Fault::NeverRedelivers if command && attempt > 1 => vec![],
            // The owner's timer is gone: no redelivery on that socket.
            Fault::ForeignAckCancelsTimer
                if pushed_here_before && self.memory().timer_cancelled.contains(&id) =>
            {
                vec![]
            }
            Fault::ReplacedCleanupCancelsTimer
                if pushed_here_before && self.memory().replacing.contains(&s.agent) =>
            {
                vec![]
            }
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
            | Fault::FifoTiesByCommandId
            | Fault::SentFirstAtConnect
                if command && at_connect =>
            {
                vec![Act::Hold(Json::parse(&message).unwrap())]
            }
            Fault::TtlRestartsOnPush if command => {
                self.memory()
                    .last_push
                    .insert(id.clone(), (Instant::now(), attempt));
                vec![Act::Agent(message)]
            }
            Fault::ProgressBuriedAtAckDeadline if command => {
                let deadline = Instant::now() + s.ack_timeout;
                self.memory().ack_deadline.insert(id.clone(), deadline);
                vec![Act::Agent(message)]
            }
            Fault::UnackedNotRepushed if repush => vec![],
            Fault::StaleTimerAfterReconnect if command => {
                let now = Instant::now();
                let before = self.memory().last_push.insert(id.clone(), (now, attempt));
                let mut acts = vec![Act::Agent(message)];
                // The old timer: due ack_timeout + backoff(n) after push n.
                if let Some((at, n)) = before.filter(|_| repush) {
                    let due = at + s.ack_timeout + Timings::backoff(n as u32);
                    if due > now {
                        let mut early = value.clone();
                        early["data"]["attempt"] = json!(attempt + 1);
                        acts.push(Act::AgentAt(due, Message::text(early.to_string())));
                    }
                }
                acts
            }
            Fault::TakeoverRepushesSentOnly
                if repush && {
                    let memory = self.memory();
                    memory.replacing.contains(&s.agent) && memory.progress.contains_key(&id)
                } =>
            {
                vec![]
            }
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
