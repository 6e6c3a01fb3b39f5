//! The page's routes: HTML pages rendered from compiled templates, a small JSON and
//! server-sent-events API for what changes while a page is open, and the guard in front of
//! them all (session, login, CSRF, host name).

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use askama::Template;
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use futures::Stream;
use serde::Deserialize;
use serde_json::{Value as Json_, json};
use tokio::sync::broadcast::error::RecvError;
use tracing::{info, warn};

use super::auth::{self, Session};
use super::{BODY_LIMIT, Shared, View};
use crate::bus::BusStats;
use crate::commission;
use crate::config::{BusKind, DataType, Profiles, WordOrder, parse_register};
use crate::mqtt::Incoming;
use crate::payload::VERSION;

/// The client's address (for counting its failed logins).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Client(pub IpAddr);

/// The request's session, put there by the guard.
#[derive(Clone)]
struct SessionOf {
    token: String,
    session: Session,
}

const CSS: &str = include_str!("static/app.css");
const JS: &str = include_str!("static/app.js");

/// How long a command from the page waits for its result.
const COMMAND_WAIT: Duration = Duration::from_secs(15);
/// Rows of a chart at most (the newest).
const CHART_ROWS: u64 = 5_000;
/// Events shown on a device page.
const DEVICE_EVENTS: u64 = 20;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(gateway_page))
        .route("/device/{name}", get(device_page))
        .route("/bus/{name}", get(bus_page))
        .route("/config", get(config_page))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
        .route("/api/live", get(live))
        .route("/api/device/{name}/history", get(history))
        .route("/api/device/{name}/command", post(command))
        .route("/api/bus/{name}/read", get(read))
        .route("/api/bus/{name}/write", post(write))
        .route("/api/bus/{name}/scan", get(scan))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(shared)
}

/// Without a password the page trusts whoever reaches it, which only loopback may: so the
/// name it is reached by must be loopback too. Otherwise a web site could rename itself to
/// 127.0.0.1 (DNS rebinding) and drive the page from the user's browser.
fn host_is_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", message.into()),
    )
        .into_response()
}

fn api_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"ok": false, "error": message.into()}))).into_response()
}

async fn guard(State(s): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    if s.password.is_none() && !host_is_loopback(req.headers()) {
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "this page is served to loopback only; open http://127.0.0.1:{}/",
                s.port
            ),
        );
    }
    let now = Instant::now();
    let presented = req
        .headers()
        .get(header::COOKIE)
        .and_then(|c| c.to_str().ok())
        .and_then(auth::from_cookie_header)
        .map(str::to_string);
    let existing = presented.and_then(|t| {
        let session = s.sessions.lock().ok()?.get(&t, now)?;
        Some(SessionOf { token: t, session })
    });
    // A browser without a session gets one at once: its CSRF token is needed before any login.
    let (cx, new_cookie) = match existing {
        Some(cx) => (cx, None),
        None => {
            let created = s
                .sessions
                .lock()
                .ok()
                .and_then(|mut ss| ss.create(s.password.is_none(), now));
            let Some((token, session)) = created else {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no random source for a session",
                );
            };
            (
                SessionOf {
                    token: token.clone(),
                    session,
                },
                Some(token),
            )
        }
    };
    let path = req.uri().path().to_string();
    let public = path == "/login" || path.starts_with("/static/");
    let csrf_ok = |headers: &HeaderMap, cx: &SessionOf| {
        headers
            .get("x-csrf-token")
            .is_some_and(|t| auth::same_secret(t.as_bytes(), cx.session.csrf.as_bytes()))
    };
    let mut resp = if !cx.session.authenticated && !public {
        if path.starts_with("/api/") {
            api_error(StatusCode::UNAUTHORIZED, "log in first")
        } else {
            Redirect::to("/login").into_response()
        }
    } else if req.method() == Method::POST
        && path.starts_with("/api/")
        && !csrf_ok(req.headers(), &cx)
    {
        api_error(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token (reload the page)",
        )
    } else {
        req.extensions_mut().insert(cx);
        next.run(req).await
    };
    let h = resp.headers_mut();
    if let Some(token) = new_cookie {
        if let Ok(v) = HeaderValue::from_str(&auth::cookie(&token)) {
            h.append(header::SET_COOKIE, v);
        }
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !path.starts_with("/static/") {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// What every page's header needs.
struct Nav {
    gateway: String,
    csrf: String,
    /// A password protects the page: show "log out".
    logout: bool,
    devices: Vec<String>,
    buses: Vec<String>,
}

fn nav(s: &Shared, view: &View, cx: &SessionOf) -> Nav {
    Nav {
        gateway: s.gateway.clone(),
        csrf: cx.session.csrf.clone(),
        logout: s.password.is_some(),
        devices: view.config.devices.keys().cloned().collect(),
        buses: view.config.buses.keys().cloned().collect(),
    }
}

fn render(t: impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            warn!(error = %e, "commissioning page: a template failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
        }
    }
}

fn not_found_page(what: &str) -> Response {
    text(StatusCode::NOT_FOUND, format!("{what} not found"))
}

async fn not_found() -> Response {
    not_found_page("page")
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        JS,
    )
        .into_response()
}

// ---- login ----

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    gateway: String,
    csrf: String,
    error: Option<String>,
}

async fn login_page(State(s): State<Arc<Shared>>, Extension(cx): Extension<SessionOf>) -> Response {
    if s.password.is_none() || cx.session.authenticated {
        return Redirect::to("/").into_response();
    }
    render(LoginPage {
        gateway: s.gateway.clone(),
        csrf: cx.session.csrf,
        error: None,
    })
}

#[derive(Deserialize)]
struct LoginForm {
    password: String,
    csrf: String,
}

async fn login(
    State(s): State<Arc<Shared>>,
    Extension(cx): Extension<SessionOf>,
    Extension(client): Extension<Client>,
    Form(form): Form<LoginForm>,
) -> Response {
    let Some(password) = &s.password else {
        return Redirect::to("/").into_response();
    };
    let now = Instant::now();
    if !auth::same_secret(form.csrf.as_bytes(), cx.session.csrf.as_bytes()) {
        return text(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token (reload the page)",
        );
    }
    let wait = s
        .logins
        .lock()
        .ok()
        .and_then(|mut l| l.refused(client.0, now));
    if let Some(wait) = wait {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, wait.as_secs().max(1).to_string())],
            format!(
                "too many failed logins from {}; try again in {} s\n",
                client.0,
                wait.as_secs().max(1)
            ),
        )
            .into_response();
    }
    if !auth::same_secret(form.password.as_bytes(), password.expose().as_bytes()) {
        let n = s
            .logins
            .lock()
            .map(|mut l| l.failed(client.0, now))
            .unwrap_or(0);
        warn!(client = %client.0, failures = n, "commissioning page: failed login");
        let mut resp = render(LoginPage {
            gateway: s.gateway.clone(),
            csrf: cx.session.csrf,
            error: Some("wrong password".into()),
        });
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        return resp;
    }
    if let Ok(mut l) = s.logins.lock() {
        l.succeeded(client.0);
    }
    // A new session on login: a token seen before it (fixation) is worth nothing after.
    let created = s.sessions.lock().ok().and_then(|mut ss| {
        ss.remove(&cx.token);
        ss.create(true, now)
    });
    let Some((token, _)) = created else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no random source for a session",
        );
    };
    info!(client = %client.0, "commissioning page: logged in");
    let mut resp = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::cookie(&token)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(s): State<Arc<Shared>>,
    Extension(cx): Extension<SessionOf>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !auth::same_secret(form.csrf.as_bytes(), cx.session.csrf.as_bytes()) {
        return text(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token (reload the page)",
        );
    }
    if let Ok(mut ss) = s.sessions.lock() {
        ss.remove(&cx.token);
    }
    Redirect::to("/login").into_response()
}

// ---- the gateway ----

struct BusRow {
    name: String,
    kind: String,
    transactions: u64,
    errors: u64,
    timeouts: u64,
    p50: String,
    p99: String,
    utilisation: String,
}

struct DeviceRow {
    name: String,
    bus: String,
    location: String,
    status: String,
    points: usize,
    profile: String,
    availability_topic: String,
}

#[derive(Template)]
#[template(path = "gateway.html")]
struct GatewayPage {
    nav: Nav,
    version: &'static str,
    uptime: String,
    connected: bool,
    broker: String,
    reconnects: u64,
    published: u64,
    dropped: u64,
    queued: u64,
    last_error: String,
    buses: Vec<BusRow>,
    devices: Vec<DeviceRow>,
    warnings: Vec<String>,
    allow_writes: bool,
}

fn ms(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.1} ms"))
        .unwrap_or_else(|| "–".into())
}

fn bus_row(name: &str, kind: BusKind, stats: &BusStats, uptime: Duration) -> BusRow {
    let get = BusStats::get;
    let busy = get(&stats.busy_us_total) as f64 / uptime.as_micros().max(1) as f64;
    BusRow {
        name: name.to_string(),
        kind: kind.name().to_string(),
        transactions: get(&stats.transactions),
        errors: get(&stats.errors),
        timeouts: get(&stats.timeouts),
        p50: ms(stats.latency.quantile_ms(0.5)),
        p99: ms(stats.latency.quantile_ms(0.99)),
        utilisation: format!("{:.1} %", (busy * 100.0).min(100.0)),
    }
}

fn availability(s: &Shared, topic: &str) -> String {
    s.tap
        .latest(topic)
        .and_then(|p| serde_json::from_str::<Json_>(&p.payload).ok())
        .and_then(|j| j["status"].as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

async fn gateway_page(
    State(s): State<Arc<Shared>>,
    Extension(cx): Extension<SessionOf>,
) -> Response {
    let Some(view) = s.view.borrow().clone() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting");
    };
    let uptime = s.started.elapsed();
    let counters = s.mqtt.stats();
    let buses = view
        .health
        .modbus
        .iter()
        .map(|(name, stats)| {
            let kind = view
                .config
                .buses
                .get(name)
                .map_or(BusKind::ModbusTcp, |b| b.kind);
            bus_row(name, kind, stats, uptime)
        })
        .collect();
    let devices = view
        .config
        .devices
        .iter()
        .map(|(name, d)| {
            let topic = view.topics.availability(name, &d.location);
            DeviceRow {
                name: name.clone(),
                bus: d.bus.clone(),
                location: d.location.clone(),
                status: availability(&s, &topic),
                points: d.points.len(),
                profile: d
                    .profile
                    .as_ref()
                    .map(|p| p.name.clone())
                    .unwrap_or_default(),
                availability_topic: topic,
            }
        })
        .collect();
    render(GatewayPage {
        nav: nav(&s, &view, &cx),
        version: VERSION,
        uptime: humantime::format_duration(Duration::from_secs(uptime.as_secs())).to_string(),
        connected: *s.mqtt.connected().borrow(),
        broker: view.config.mqtt.url.to_string(),
        reconnects: counters.reconnects,
        published: counters.published,
        dropped: counters.dropped,
        queued: counters.queued,
        last_error: s.mqtt.last_error(),
        buses,
        devices,
        warnings: crate::telemetry::recent_warnings()
            .into_iter()
            .rev()
            .collect(),
        allow_writes: s.web.allow_writes,
    })
}

// ---- a device ----

struct PointRow {
    name: String,
    value: String,
    unit: String,
    age: String,
    /// Seconds since the UNIX epoch of the value, for the page's own clock.
    at: f64,
    sensor_topic: String,
    writable: bool,
    /// How the page asks for a new value: `number`, `bool`, `select` or `text`.
    input: &'static str,
    /// A number: it can be drawn.
    numeric: bool,
    options: Vec<String>,
    min: String,
    max: String,
}

struct EventRow {
    time: String,
    kind: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage {
    nav: Nav,
    name: String,
    bus: String,
    unit: String,
    location: String,
    profile: String,
    status: String,
    state_topic: String,
    availability_topic: String,
    result_topic: String,
    points: Vec<PointRow>,
    actions: Vec<String>,
    events: Vec<EventRow>,
    results: Vec<String>,
    allow_writes: bool,
    history: bool,
    awaiting_walk: bool,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn shown(v: &Json_) -> String {
    match v {
        Json_::String(s) => s.clone(),
        Json_::Null => "–".into(),
        other => other.to_string(),
    }
}

fn time_of(seconds: f64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(seconds.max(0.0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn input_of(p: &crate::config::PointConfig) -> (&'static str, Vec<String>) {
    if let Some(map) = &p.map {
        return ("select", map.values().cloned().collect());
    }
    match p.effective_type() {
        Some(DataType::Bool) => ("bool", Vec::new()),
        Some(DataType::String) => ("text", Vec::new()),
        None if p.send.is_some() => ("text", Vec::new()),
        _ => ("number", Vec::new()),
    }
}

async fn device_page(
    State(s): State<Arc<Shared>>,
    Extension(cx): Extension<SessionOf>,
    Path(name): Path<String>,
) -> Response {
    let Some(view) = s.view.borrow().clone() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting");
    };
    let Some(dev) = view.config.devices.get(&name).cloned() else {
        return not_found_page(&format!("device \"{name}\""));
    };
    let loc = &dev.location;
    let state_topic = view.topics.state(&name, loc);
    let state: Json_ = s
        .tap
        .latest(&state_topic)
        .and_then(|p| serde_json::from_str(&p.payload).ok())
        .unwrap_or(Json_::Null);
    let state_at = state["timestamp"].as_f64();
    let now = unix(SystemTime::now());
    let points = dev
        .points
        .iter()
        .map(|(pname, p)| {
            let sensor_topic = view.topics.sensor(&name, loc, pname);
            let (value, at) = match s.tap.latest(&sensor_topic) {
                Some(m) => {
                    let j: Json_ = serde_json::from_str(&m.payload).unwrap_or(Json_::Null);
                    (
                        shown(&j["value"]),
                        j["timestamp"].as_f64().unwrap_or(unix(m.at)),
                    )
                }
                None => (shown(&state[pname.as_str()]), state_at.unwrap_or(0.0)),
            };
            let age = if at > 0.0 && value != "–" {
                format!("{:.0} s", (now - at).max(0.0))
            } else {
                "–".into()
            };
            let (input, options) = input_of(p);
            let numeric = p.map.is_none() && p.effective_type().is_none_or(DataType::is_numeric);
            PointRow {
                name: pname.clone(),
                value,
                unit: p.unit.clone().unwrap_or_default(),
                age,
                at,
                sensor_topic,
                writable: p.writable,
                input,
                numeric,
                options,
                min: p.min.map(|m| m.to_string()).unwrap_or_default(),
                max: p.max.map(|m| m.to_string()).unwrap_or_default(),
            }
        })
        .collect();
    let mut events = Vec::new();
    if let Some(pool) = &s.history {
        let filter = crate::history::Filter {
            device: Some(name.clone()),
            limit: Some(DEVICE_EVENTS),
            ..Default::default()
        };
        let read = crate::history::each_event(pool, &filter, |e| {
            events.push(EventRow {
                time: time_of(e.timestamp),
                kind: e.kind,
                detail: e.detail,
            });
            Ok(())
        })
        .await;
        if let Err(e) = read {
            warn!(device = %name, error = %e, "commissioning page: the device's events could not be read");
        }
        events.reverse();
    }
    let command_topic = view.topics.command(&name, loc);
    let result_topic = format!("{command_topic}/result");
    let results = s
        .tap
        .results()
        .into_iter()
        .rev()
        .filter(|r| r.topic == result_topic)
        .map(|r| format!("{}  {}", time_of(unix(r.at)), r.payload))
        .collect();
    let availability_topic = view.topics.availability(&name, loc);
    render(DevicePage {
        nav: nav(&s, &view, &cx),
        status: availability(&s, &availability_topic),
        bus: dev.bus.clone(),
        unit: dev.unit.map(|u| u.to_string()).unwrap_or_default(),
        location: dev.location.clone(),
        profile: dev
            .profile
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default(),
        state_topic,
        availability_topic,
        result_topic,
        points,
        actions: dev.actions.keys().cloned().collect(),
        events,
        results,
        allow_writes: s.web.allow_writes,
        history: s.history.is_some(),
        awaiting_walk: dev.awaits_walk(),
        name,
    })
}

#[derive(Deserialize)]
struct HistoryQuery {
    point: String,
    #[serde(default)]
    since: Option<String>,
}

/// A point's local history for the chart: `[[unix seconds, value], …]`, oldest first, the
/// newest [`CHART_ROWS`] at most.
async fn history(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let Some(pool) = &s.history else {
        return api_error(
            StatusCode::NOT_FOUND,
            "history is off (history.enabled = false)",
        );
    };
    let Some(view) = s.view.borrow().clone() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting");
    };
    let Some(dev) = view.config.devices.get(&name) else {
        return api_error(StatusCode::NOT_FOUND, format!("no device \"{name}\""));
    };
    if !dev.points.contains_key(&q.point) {
        return api_error(
            StatusCode::NOT_FOUND,
            format!("device \"{name}\" has no point \"{}\"", q.point),
        );
    }
    let since = match q.since.as_deref() {
        None | Some("") => None,
        Some(t) => match crate::history::parse_time(t, SystemTime::now()) {
            Ok(t) => Some(t),
            Err(e) => return api_error(StatusCode::BAD_REQUEST, format!("since: {e}")),
        },
    };
    let filter = crate::history::Filter {
        device: Some(name),
        point: Some(q.point),
        since,
        limit: Some(CHART_ROWS),
        ..Default::default()
    };
    let mut rows: Vec<Json_> = Vec::new();
    let read = crate::history::each_reading(pool, &filter, |r| {
        let v = match r.value.as_f64() {
            Some(x) => json!(x),
            None => r.value.to_json(),
        };
        rows.push(json!([r.timestamp, v]));
        Ok(())
    })
    .await;
    match read {
        Ok(_) => Json(json!({"ok": true, "rows": rows})).into_response(),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, format!("history: {e}")),
    }
}

/// A command from the page: the same router, validation and results as over MQTT. Its `id`
/// is the page's own (`web-…`), which is how the history tells its commands apart.
async fn command(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if !s.web.allow_writes {
        return api_error(
            StatusCode::FORBIDDEN,
            "commands from the page are off (web.allow_writes = false)",
        );
    }
    let Some(view) = s.view.borrow().clone() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting");
    };
    let Some(dev) = view.config.devices.get(&name) else {
        return api_error(StatusCode::NOT_FOUND, format!("no device \"{name}\""));
    };
    let mut payload: serde_json::Map<String, Json_> = match serde_json::from_slice(&body) {
        Ok(Json_::Object(m)) => m,
        Ok(_) => return api_error(StatusCode::BAD_REQUEST, "a command is a JSON object"),
        Err(e) => return api_error(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")),
    };
    let id = format!(
        "web-{}",
        auth::token()
            .map(|t| t[..12].to_string())
            .unwrap_or_default()
    );
    payload.insert("id".into(), json!(id));
    let topic = view.topics.command(&name, &dev.location);
    let result_topic = format!("{topic}/result");
    let mut live = s.tap.subscribe();
    let msg = Incoming {
        topic,
        payload: Json_::Object(payload).to_string().into_bytes(),
        retained: false,
        ack: None,
    };
    if s.commands.try_send(msg).is_err() {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy: too many commands from the page",
        );
    }
    let wait = async {
        loop {
            match live.recv().await {
                Ok(m) if m.topic == result_topic => {
                    let j: Json_ = serde_json::from_str(&m.payload).unwrap_or(Json_::Null);
                    if j["id"] == json!(id) {
                        return Some(j);
                    }
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return None,
            }
        }
    };
    match tokio::time::timeout(COMMAND_WAIT, wait).await {
        Ok(Some(result)) => Json(result).into_response(),
        _ => api_error(
            StatusCode::GATEWAY_TIMEOUT,
            format!("no result within {} s", COMMAND_WAIT.as_secs()),
        ),
    }
}

// ---- live values ----

/// Every message the devices publish, as server-sent events (`{"topic", "payload", "at"}`);
/// a page that fell behind gets `reload`.
async fn live(State(s): State<Arc<Shared>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = s.tap.subscribe();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(m) => Event::default().data(
                json!({"topic": m.topic, "payload": m.payload, "at": unix(m.at)}).to_string(),
            ),
            Err(RecvError::Lagged(_)) => Event::default().event("reload").data("lagged"),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

// ---- a bus ----

#[derive(Template)]
#[template(path = "bus.html")]
struct BusPage {
    nav: Nav,
    name: String,
    kind: String,
    link: String,
    modbus: bool,
    row: Option<BusRow>,
    devices: Vec<(String, String)>,
    allow_writes: bool,
}

async fn bus_page(
    State(s): State<Arc<Shared>>,
    Extension(cx): Extension<SessionOf>,
    Path(name): Path<String>,
) -> Response {
    let Some(view) = s.view.borrow().clone() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting");
    };
    let Some(bus) = view.config.buses.get(&name) else {
        return not_found_page(&format!("bus \"{name}\""));
    };
    let row = view
        .health
        .modbus
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, st)| bus_row(n, bus.kind, st, s.started.elapsed()));
    let devices = view
        .config
        .devices
        .iter()
        .filter(|(_, d)| d.bus == name)
        .map(|(n, d)| {
            (
                n.clone(),
                d.unit.map(|u| format!("unit {u}")).unwrap_or_default(),
            )
        })
        .collect();
    let link = bus
        .port
        .clone()
        .or_else(|| bus.address.clone())
        .unwrap_or_default();
    render(BusPage {
        nav: nav(&s, &view, &cx),
        kind: bus.kind.name().to_string(),
        link,
        modbus: bus.kind.is_modbus(),
        row,
        devices,
        allow_writes: s.web.allow_writes,
        name,
    })
}

fn bus_handle(view: &View, name: &str) -> Result<crate::bus::BusHandle, Box<Response>> {
    let refused = |status, msg: String| Box::new(api_error(status, msg));
    match view.config.buses.get(name) {
        None => Err(refused(StatusCode::NOT_FOUND, format!("no bus \"{name}\""))),
        Some(b) if !b.kind.is_modbus() => Err(refused(
            StatusCode::BAD_REQUEST,
            format!("bus \"{name}\" is a serial line bus, not Modbus"),
        )),
        Some(_) => view.buses.get(name).cloned().ok_or_else(|| {
            refused(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("bus \"{name}\" is not running"),
            )
        }),
    }
}

fn commission_error(e: commission::Error) -> Response {
    match e {
        commission::Error::Usage(m) => api_error(StatusCode::BAD_REQUEST, m),
        commission::Error::Failed(m) => api_error(StatusCode::BAD_GATEWAY, m),
    }
}

#[derive(Deserialize)]
struct ReadQuery {
    unit: u8,
    register: String,
    #[serde(default = "one")]
    count: u16,
}

fn one() -> u16 {
    1
}

/// `fieldbridge read` from the page: the words and every decoding, through the bus's queue.
async fn read(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Response {
    let Some(view) = s.view.borrow().clone() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting");
    };
    let handle = match bus_handle(&view, &name) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    let register = match parse_register(&q.register) {
        Ok(r) => r,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, format!("register: {e}")),
    };
    match commission::read_on(&handle, &name, q.unit, register, q.count).await {
        Ok(text) => Json(json!({"ok": true, "text": text})).into_response(),
        Err(e) => commission_error(e),
    }
}

#[derive(Deserialize)]
struct WriteBody {
    unit: u8,
    register: String,
    #[serde(rename = "type")]
    data_type: String,
    #[serde(default)]
    order: Option<String>,
    value: String,
}

/// `fieldbridge write` from the page (with `allow_writes`): one typed write, read back.
async fn write(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if !s.web.allow_writes {
        return api_error(
            StatusCode::FORBIDDEN,
            "register writes from the page are off (web.allow_writes = false)",
        );
    }
    let w: WriteBody = match serde_json::from_slice(&body) {
        Ok(w) => w,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, format!("malformed request: {e}")),
    };
    let Some(view) = s.view.borrow().clone() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting");
    };
    let handle = match bus_handle(&view, &name) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    let register = match parse_register(&w.register) {
        Ok(r) => r,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, format!("register: {e}")),
    };
    let Some(ty) = DataType::NAMES
        .iter()
        .position(|n| *n == w.data_type)
        .map(|i| crate::config::ALL_TYPES[i])
    else {
        return api_error(
            StatusCode::BAD_REQUEST,
            format!("unknown type \"{}\"", w.data_type),
        );
    };
    let order = match WordOrder::NAMES
        .iter()
        .position(|n| Some(*n) == w.order.as_deref().or(Some("ABCD")))
    {
        Some(i) => WordOrder::ALL[i],
        None => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "order: expected ABCD, CDAB, BADC or DCBA",
            );
        }
    };
    let spec = match commission::plan_write(register, ty, order, &w.value) {
        Ok(spec) => spec,
        Err(e) => return commission_error(e),
    };
    info!(bus = %name, unit = w.unit, register = %register, value = %w.value, "commissioning page: register write");
    match commission::write_on(&handle, &name, w.unit, register, ty, order, &w.value, spec).await {
        Ok(text) => Json(json!({"ok": true, "text": text})).into_response(),
        Err(e) => commission_error(e),
    }
}

#[derive(Deserialize)]
struct ScanQuery {
    units: String,
    #[serde(default)]
    identify: bool,
    csrf: String,
}

/// `fieldbridge scan` from the page, as server-sent events: `progress` for each unit asked,
/// `found` for each that answered (with the matching profiles and a config snippet), then
/// `done` or `error`. One scan per bus at a time; each read waits its turn in the bus queue.
async fn scan(
    State(s): State<Arc<Shared>>,
    Extension(cx): Extension<SessionOf>,
    Path(name): Path<String>,
    Query(q): Query<ScanQuery>,
) -> Response {
    // A GET (an EventSource cannot send headers), so the token rides in the query.
    if !auth::same_secret(q.csrf.as_bytes(), cx.session.csrf.as_bytes()) {
        return api_error(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token (reload the page)",
        );
    }
    let Some(view) = s.view.borrow().clone() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting");
    };
    let handle = match bus_handle(&view, &name) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    let units = match commission::parse_units(&q.units) {
        Ok(u) if *u.start() >= 1 && *u.end() <= 247 => u,
        Ok(_) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "units: Modbus unit ids are 1 to 247",
            );
        }
        Err(_) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "units: \"{}\" is not a range within 1-247 (e.g. 1-20)",
                    q.units
                ),
            );
        }
    };
    let claimed = s
        .scanning
        .lock()
        .map(|mut b| b.insert(name.clone()))
        .unwrap_or(false);
    if !claimed {
        return api_error(
            StatusCode::CONFLICT,
            format!("bus \"{name}\" is being scanned already"),
        );
    }
    let serial_line = view
        .config
        .buses
        .get(&name)
        .is_some_and(|b| b.kind != BusKind::ModbusTcp);
    let profiles: Option<Profiles> = q
        .identify
        .then(|| Profiles::load(&crate::config::profiles_dir(&view.config.path)).0);
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let shared = s.clone();
    let bus = name.clone();
    tokio::spawn(async move {
        let total = units.clone().count();
        let first = *units.start();
        let progress_tx = tx.clone();
        let bus_for_snippet = bus.clone();
        let found = commission::scan_on(
            &handle,
            serial_line,
            units,
            profiles.as_ref(),
            |u, found| {
                let event = match found {
                    None => Event::default().event("progress").data(
                        json!({"unit": u, "done": usize::from(u - first), "total": total})
                            .to_string(),
                    ),
                    Some(what) => Event::default().event("found").data(
                        json!({
                            "unit": u,
                            "text": what,
                            "snippet": snippet(&bus_for_snippet, u, what),
                        })
                        .to_string(),
                    ),
                };
                // Progress is shown, not kept: a page that reads slowly misses some.
                if progress_tx.try_send(event).is_err() {
                    // The page reads slowly: this step is not shown; the result still is.
                }
            },
        )
        .await;
        let last = match found {
            Ok(f) => Event::default()
                .event("done")
                .data(json!({"found": f.len()}).to_string()),
            Err(e) => Event::default()
                .event("error")
                .data(json!({"error": e.to_string()}).to_string()),
        };
        if tx.send(last).await.is_err() {
            info!(bus = %bus, "commissioning page: a scan ended after its page closed");
        }
        if let Ok(mut b) = shared.scanning.lock() {
            b.remove(&bus);
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream).into_response()
}

/// A device table to paste into the config for a unit a scan found, with the first matching
/// profile when the scan identified one.
fn snippet(bus: &str, unit: u8, what: &str) -> String {
    let profile = what
        .lines()
        .find_map(|l| l.trim().strip_prefix("matching profiles: "))
        .and_then(|p| p.split(", ").next())
        .filter(|p| *p != "none");
    let mut s = format!("[devices.unit{unit}]\nbus = \"{bus}\"\nunit = {unit}\n");
    match profile {
        Some(p) => s += &format!("profile = \"{p}\"\n"),
        None => s += &format!("[devices.unit{unit}.points.value]\nregister = \"holding:0\"\n"),
    }
    s
}

// ---- the config ----

#[derive(Template)]
#[template(path = "config.html")]
struct ConfigPage {
    nav: Nav,
    summary: String,
    path: String,
}

async fn config_page(
    State(s): State<Arc<Shared>>,
    Extension(cx): Extension<SessionOf>,
) -> Response {
    let Some(view) = s.view.borrow().clone() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting");
    };
    render(ConfigPage {
        nav: nav(&s, &view, &cx),
        summary: redact(&crate::check::summary(&view.config)),
        path: view.config.path.display().to_string(),
    })
}

/// Credentials in URLs never reach the page: `scheme://user:secret@host` shows the user only.
fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let mut rest = line;
        while let Some(i) = rest.find("://") {
            let (head, tail) = rest.split_at(i + 3);
            out.push_str(head);
            let end = tail
                .find(|c: char| c.is_whitespace() || c == '/')
                .unwrap_or(tail.len());
            let authority = &tail[..end];
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split(':').next().unwrap_or("");
                    if userinfo.contains(':') {
                        out.push_str(&format!("{user}:***@{host}"));
                    } else {
                        out.push_str(authority);
                    }
                }
                None => out.push_str(authority),
            }
            rest = &tail[end..];
        }
        out.push_str(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_never_shown() {
        assert_eq!(
            redact("forwarded to postgres://gw:s3cret@db.lan/home (sslmode verify-full)\n"),
            "forwarded to postgres://gw:***@db.lan/home (sslmode verify-full)\n"
        );
        assert_eq!(
            redact("mqtt mqtt://127.0.0.1:1883 as fieldbridge-x\n"),
            "mqtt mqtt://127.0.0.1:1883 as fieldbridge-x\n"
        );
        assert_eq!(redact("a://u@h b://v:w@i/x"), "a://u@h b://v:***@i/x");
    }

    #[test]
    fn only_loopback_host_names_pass_without_a_password() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_str(v).unwrap());
            host_is_loopback(&m)
        };
        assert!(h("127.0.0.1:8080"));
        assert!(h("localhost:8080"));
        assert!(h("[::1]:8080"));
        assert!(h("127.0.0.1"));
        assert!(!h("evil.example:8080"));
        assert!(!h("192.168.1.5:8080"));
        assert!(!host_is_loopback(&HeaderMap::new()));
    }

    #[test]
    fn a_snippet_names_the_profile_a_scan_identified() {
        let s = snippet(
            "rs485",
            3,
            "answers with data\n  matching profiles: eastron-sdm120, x",
        );
        assert!(
            s.contains("[devices.unit3]") && s.contains("profile = \"eastron-sdm120\""),
            "{s}"
        );
        let s = snippet("rs485", 4, "answers with data");
        assert!(s.contains("register = \"holding:0\""), "{s}");
    }
}
