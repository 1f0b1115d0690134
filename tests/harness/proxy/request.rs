//! Faults in the request head and body (agent or operator → server).
//! `Some(answer)` answers without the server.

use super::*;

impl Proxy {
    pub(super) fn request(&self, request: &mut Http) -> Option<Http> {
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
            Fault::AckWithoutOutcomeCompletes
                if path == "/edge/command/ack"
                    && request.json().is_some_and(|b| lacks_outcome(&b)) =>
            {
                request.edit_json(|body| {
                    body.remove("status");
                    body.insert("success", Json::Bool(true));
                });
            }
            Fault::IdSyntaxNoDots
                if (socket && agent.contains(['.', '_']))
                    || (request.method() == "PUT"
                        && path.starts_with("/api/agents/")
                        && path.contains(['.', '_'])) =>
            {
                return Some(Http::answer(
                    400,
                    json!({"error": "invalid_agent_id", "message": "edge_agent_id must be [A-Za-z0-9-]"}),
                ));
            }
            Fault::SharedSecretAckSkipsOwner
                if path == "/edge/command/ack"
                    && request.header("authorization") == Some(&edge) =>
            {
                let id = request.json().unwrap_or_default()["command_id"]
                    .as_str()
                    .map(str::to_string);
                let owner = id.and_then(|id| self.memory().owners.get(&id).cloned());
                if let Some(owner) = owner {
                    request.set_header("x-edge-agent-id", &owner);
                }
            }
            Fault::FinalCheckBeforeOwner if path == "/edge/command/ack" => {
                let id = request.json().unwrap_or_default()["command_id"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let memory = self.memory();
                let foreign = hmac.as_ref().is_some_and(|(agent, _)| {
                    !memory
                        .pushed
                        .get(agent)
                        .is_some_and(|ids| ids.contains(&id))
                });
                if foreign && memory.final_acked.contains(&id) {
                    return Some(Http::answer(200, json!({"acknowledged": true})));
                }
            }
            Fault::HttpAckIgnored if path == "/edge/command/ack" => {
                return Some(Http::answer(200, json!({"acknowledged": true})));
            }
            Fault::AckWrittenBehind if path == "/edge/command/ack" => {
                self.write_behind(request.clone());
                return Some(Http::answer(200, json!({"acknowledged": true})));
            }
            Fault::AckAliasIsStub if path == "/edge/ack_command" => {
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
            Fault::SyncClearsStatus if path == "/edge/sync" => {
                if let Some(body) = request.json() {
                    let id = body["edge_agent_id"].as_str().unwrap_or("").to_string();
                    let mut memory = self.memory();
                    if body.get("status").is_none_or(Value::is_null) {
                        memory.status_cleared.insert(id);
                    } else {
                        memory.status_cleared.remove(&id);
                    }
                }
            }
            Fault::HttpProgressAckLeavesTimer if path == "/edge/command/ack" => {
                let body = request.json().unwrap_or_default();
                if body["status"] == "received" || body["status"] == "executing" {
                    let id = body["command_id"].as_str().unwrap_or("").to_string();
                    self.memory().http_progress.insert(id);
                }
            }
            Fault::CacheClearedOnAcksOnly if path == "/edge/command/ack" => {
                if let Some(id) = request
                    .json()
                    .and_then(|b| b["command_id"].as_str().map(str::to_string))
                {
                    self.memory().cached.remove(&id);
                }
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
}
