//! Faults in HTTP answers, refused upgrades included.

use super::*;

impl Proxy {
    pub(super) async fn response(&self, request: &Http, answer: &mut Http) {
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
        // The error code of a refusal (`{"error": …}`), read once.
        let error = answer
            .json()
            .and_then(|b| b["error"].as_str().map(str::to_string))
            .unwrap_or_default();
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
            Fault::UnknownAgentsNotCounted if socket && status == 403 => {
                self.memory().forbidden.insert(agent.clone());
            }
            Fault::UnknownAgentsNotCounted
                if socket && status == 429 && self.memory().forbidden.contains(&agent) =>
            {
                *answer = Http::answer(
                    403,
                    json!({"error": "unknown_agent", "message": "no such agent"}),
                );
            }
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
            Fault::GaugeCountsRefusedUpgrades if socket && status != 101 => {
                self.memory().gauge_kept += 1;
            }
            Fault::RefusesWithBare403 if socket && status == 401 => {
                answer.set_status(403);
                answer.set_body("text/plain", "");
            }
            Fault::UnknownAgentIs401 if socket && status == 403 => {
                answer.set_status(401);
                answer.set_json(json!({"error": "unauthorized", "message": "unknown agent"}));
            }
            Fault::RateLimitedUpgradeIsText if socket && status == 429 => {
                answer.set_body("text/plain", "Too many requests, please try again later.")
            }
            Fault::UpgradeErrorsNotJson if socket && status == 400 => {
                answer.set_body("text/plain", "Bad Request");
            }
            Fault::MissingTokenIsBearerDetail
                if socket && status == 401 && request.header("authorization").is_none() =>
            {
                answer.set_status(403);
                answer.set_json(json!({"detail": "Not authenticated"}));
            }
            Fault::IdSyntaxUnicode if socket && status == 400 && agent.contains("%C3") => {
                answer.set_status(403);
                answer.set_json(json!({"error": "unknown_agent", "message": "unknown edge agent"}));
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
            Fault::InvalidIdIsUnknownAgent if socket && error == "invalid_agent_id" => {
                answer.set_status(403);
                answer.set_json(json!({"error": "unknown_agent", "message": "not registered"}));
            }
            Fault::EmptyIdIsUnknownAgent
                if socket
                    && path.contains("edge_agent_id=")
                    && agent.is_empty()
                    && error == "missing_agent_id" =>
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
                if route == "/edge/register" && error == "registration_disabled" =>
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
                if route == "/edge/register" && error == "registration_disabled" =>
            {
                answer.set_status(401);
                answer.set_json(
                    json!({"error": "unauthorized", "message": "wrong registration_token"}),
                );
            }
            Fault::HttpAckWithoutAgentIdAccepted
                if route == "/edge/command/ack" && error == "missing_agent_id" =>
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
            Fault::SyncQueuedBeforeDue | Fault::SyncNewestFirstWithinPriority
                if route == "/edge/sync" =>
            {
                let fault = self.fault;
                answer.edit_json(|body| {
                    if let Some(Json::Array(commands)) = body.get_mut("commands") {
                        let text = |c: &Json, key: &str| match c.get(key) {
                            Some(Json::String(s)) => s.clone(),
                            Some(Json::Number(n)) => n.to_string(),
                            _ => String::new(),
                        };
                        match fault {
                            // Two queries joined: the queued ones, then the due ones.
                            Fault::SyncQueuedBeforeDue => {
                                commands.sort_by_key(|c| text(c, "attempt") != "1")
                            }
                            // A listing query reused: newest first within a priority.
                            _ => commands
                                .chunk_by_mut(|a, b| text(a, "priority") == text(b, "priority"))
                                .for_each(|run| run.reverse()),
                        }
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
            Fault::ConfigBroadcast if route.ends_with("/config") && status == 202 => {
                let named = route
                    .trim_start_matches("/api/agents/")
                    .trim_end_matches("/config");
                let others: Vec<String> = self
                    .memory()
                    .live
                    .iter()
                    .filter(|(id, sockets)| **sockets > 0 && id.as_str() != named)
                    .map(|(id, _)| id.clone())
                    .collect();
                let body = String::from_utf8_lossy(&request.body).to_string();
                for other in others {
                    self.admin("POST", &format!("/api/agents/{other}/config"), &body)
                        .await;
                }
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
            Fault::FinalCommandsExpireAtTtl | Fault::TtlRestartsOnPush
                if is_command_post(request) && status == 202 =>
            {
                let ttl = request.json().and_then(|b| b["ttl_s"].as_u64());
                let id = answer.json().map(|b| b["command_id"].clone());
                if let (Some(ttl), Some(Value::String(id))) = (ttl, id) {
                    let ttl = (Instant::now(), Duration::from_secs(ttl));
                    self.memory().ttls.insert(id, ttl);
                }
            }
            Fault::FinalCommandsExpireAtTtl if method == "GET" && status == 200 => {
                let ttl = command.and_then(|id| self.memory().ttls.get(&id).copied());
                let Some(at) = ttl.map(|(accepted, ttl)| accepted + ttl) else {
                    return;
                };
                answer.edit_json(|body| {
                    let finished = matches!(body.get("status"),
                        Some(Json::String(s)) if s == "completed" || s == "failed");
                    if Instant::now() >= at && finished {
                        body.insert("status", Json::String("expired".into()));
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
            // Not expired yet: its TTL restarted at its last push.
            Fault::TtlRestartsOnPush if method == "GET" && command.is_some() && status == 200 => {
                let id = command.unwrap();
                let memory = self.memory();
                let alive = memory
                    .ttls
                    .get(&id)
                    .zip(memory.last_push.get(&id))
                    .is_some_and(|((_, ttl), (pushed, _))| pushed.elapsed() < *ttl);
                drop(memory);
                if alive && answer.json().is_some_and(|b| b["status"] == "expired") {
                    answer.edit_json(|body| body.insert("status", Json::String("sent".into())));
                }
            }
            Fault::RepeatResetsInFlight if is_command_post(request) && status == 200 => {
                let body = answer.json().unwrap_or_default();
                let id = body["command_id"].as_str().unwrap_or("").to_string();
                let finished = ["completed", "failed", "expired", "dead"];
                if !finished.contains(&body["status"].as_str().unwrap_or("")) {
                    self.memory().reset.insert(id);
                }
            }
            Fault::RepeatResetsInFlight
                if method == "GET"
                    && status == 200
                    && command
                        .as_ref()
                        .is_some_and(|id| self.memory().reset.contains(id)) =>
            {
                answer.edit_json(|body| {
                    body.insert("status", Json::String("queued".into()));
                    body.insert("attempts", Json::from(0));
                });
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
            Fault::ReconnectsNeverCounted
            | Fault::PingsNeverCounted
            | Fault::ConnectionFailuresNeverCounted
            | Fault::NormalDisconnectsUncounted
                if route == "/metrics" =>
            {
                let never = |sample: &str| match self.fault {
                    Fault::ReconnectsNeverCounted => sample.starts_with("edge_reconnects"),
                    Fault::PingsNeverCounted => {
                        sample.starts_with("edge_pings") || sample.starts_with("edge_pongs")
                    }
                    Fault::ConnectionFailuresNeverCounted => {
                        sample.starts_with("edge_connection_failures")
                    }
                    _ => sample.contains("reason=\"normal\""),
                };
                zero_samples(answer, never)
            }
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
            Fault::GaugeKeepsReplacedSockets
            | Fault::GaugeKeepsTimedOutSockets
            | Fault::GaugeNeverFalls
            | Fault::GaugeCountsRefusedUpgrades
                if route == "/metrics" =>
            {
                let kept = self.memory().gauge_kept as f64;
                raise_sample(answer, "edge_connections_active", kept)
            }
            Fault::GaugeNeverMoves if route == "/metrics" => {
                zero_samples(answer, |sample| sample == "edge_connections_active")
            }
            Fault::RepeatedAckCountedTwice if route == "/metrics" => {
                let extra = self.memory().repeated_final_acks as f64;
                raise_sample(answer, "edge_commands_total{outcome=\"completed\"}", extra)
            }
            Fault::SkipsSentState
            | Fault::ProgressStateNotShown
            | Fault::ProgressStateResetOnReconnect
            | Fault::ProgressCommandGoesDead
            | Fault::ProgressBuriedAtAckDeadline
            | Fault::ProgressStateNeverExpires
            | Fault::OneAttemptTooMany
            | Fault::DeadNeverMarked
            | Fault::SyncedNeverDead
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
                    Fault::ProgressBuriedAtAckDeadline
                        if progress
                            && body["attempts"].as_u64() >= Some(memory.max_attempts)
                            && memory
                                .ack_deadline
                                .get(&id)
                                .is_some_and(|t| Instant::now() >= *t) =>
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
                    Fault::SyncedNeverDead
                        if state == "dead" && body["delivered_via"] == "http" =>
                    {
                        "sent".to_string()
                    }
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
            | Fault::ForeignInFlightAckAccepted
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
            Fault::CacheClearedOnAcksOnly
                if method == "GET" && command.is_some() && status == 200 =>
            {
                let Some(fresh) = answer.json() else {
                    return;
                };
                let mut memory = self.memory();
                let cached = memory.cached.entry(command.unwrap());
                let (shown, since) = cached.or_insert_with(|| (fresh.clone(), Instant::now()));
                if since.elapsed() >= Duration::from_millis(500) {
                    (*shown, *since) = (fresh, Instant::now());
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
            Fault::ReplacedDisconnectNotRecorded
                if method == "GET" && route.starts_with("/api/agents/") && status == 200 =>
            {
                if let Some(mut body) = answer.json() {
                    for entry in body["history"].as_array_mut().into_iter().flatten() {
                        if entry["reason"] == "replaced" {
                            entry["reason"] = Value::Null;
                            entry["disconnected_at"] = Value::Null;
                        }
                    }
                    answer.set_json(body);
                }
            }
            Fault::StatusKeptWithSocket
                if method == "GET" && route.starts_with("/api/agents/") && status == 200 =>
            {
                answer.edit_json(|body| {
                    if body.get("connected") == Some(&Json::Bool(false)) {
                        body.remove("last_status");
                    }
                });
            }
            Fault::RegisterHandsOutSharedSecret if route == "/edge/register" && status < 300 => {
                let secret = Json::String(self.secrets.edge.clone());
                answer.edit_json(|body| body.insert("auth_token", secret));
            }
            Fault::ProgressMovesBack if method == "GET" && status == 200 => {
                let back = command.is_some_and(|id| {
                    self.memory()
                        .progress
                        .get(&id)
                        .is_some_and(|p| p == "received")
                });
                if back {
                    answer.edit_json(|body| {
                        if body.get("status") == Some(&Json::String("executing".into())) {
                            body.insert("status", Json::String("received".into()));
                        }
                    });
                }
            }
            Fault::SharedSecretAckSkipsOwner if is_command_post(request) && status == 202 => {
                let id = answer.json().unwrap_or_default()["command_id"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let agent = route.split('/').nth(3).unwrap_or("").to_string();
                self.memory().owners.insert(id, agent);
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
            Fault::ConnectedListFromRegistry
                if method == "GET" && route == "/api/agents" && status == 200 =>
            {
                if let Some(Value::Array(agents)) = answer.json() {
                    let bare = agents.into_iter().map(|mut agent| {
                        agent["pending_commands"] = json!(0);
                        agent["last_status"] = Value::Null;
                        agent
                    });
                    answer.set_json(Value::Array(bare.collect()));
                }
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
            Fault::NormalCloseRecordedAsError
            | Fault::PingTimeoutRecordedAsNormal
            | Fault::ErrorCloseRecordedAsNormal
                if method == "GET" && route.starts_with("/api/agents/") =>
            {
                let (from, to) = match self.fault {
                    Fault::NormalCloseRecordedAsError => ("normal", "error"),
                    Fault::ErrorCloseRecordedAsNormal => ("error", "normal"),
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
            Fault::HistoryTimesWithoutZone
                if method == "GET" && route.starts_with("/api/agents/") =>
            {
                answer.edit_json(|body| {
                    if let Some(history) = body.get_mut("history") {
                        history.edit_strings(&|text| misdate(Fault::TimestampsWithoutZone, text));
                    }
                });
            }
            Fault::SyncClearsStatus if method == "GET" && route.starts_with("/api/agents/") => {
                let id = route.trim_start_matches("/api/agents/");
                if self.memory().status_cleared.contains(id) {
                    answer.edit_json(|body| body.insert("last_status", Json::Null));
                }
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
}
