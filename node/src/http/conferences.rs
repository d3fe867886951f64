//! `/api/v1/conferences`: rooms and their participants; mute, unmute, kick, lock, unlock.
//!
//! A participant is named by the id the listing gives it (unique on the node while it runs);
//! its number is the caller's extension.

use super::{ApiState, ask, error, require_auth, rfc3339};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use pbx_actors::conference::actor::{ConferencesMsg, Control, RoomView};
use serde::Serialize;

#[derive(Serialize)]
struct ParticipantOut {
    id: String,
    number: String,
    /// When it came into the room; `null` while at the PIN prompt.
    joined: Option<String>,
    moderator: bool,
    muted: bool,
    talking: bool,
    packets_in: u64,
    concealed_frames: u64,
}

#[derive(Serialize)]
struct RoomOut {
    number: String,
    name: String,
    pin: bool,
    moderator_pin: bool,
    max_participants: usize,
    active: bool,
    locked: bool,
    active_speaker: Option<String>,
    frame_overruns: u64,
    participants: Vec<ParticipantOut>,
}

impl From<RoomView> for RoomOut {
    fn from(v: RoomView) -> RoomOut {
        RoomOut {
            number: v.number,
            name: v.name,
            pin: v.pin,
            moderator_pin: v.moderator_pin,
            max_participants: v.max_participants,
            active: v.active,
            locked: v.locked,
            active_speaker: v.active_speaker.map(|id| id.to_string()),
            frame_overruns: v.frame_overruns,
            participants: v
                .participants
                .into_iter()
                .map(|p| ParticipantOut {
                    id: p.id.to_string(),
                    number: p.number,
                    joined: p.joined.map(rfc3339),
                    moderator: p.moderator,
                    muted: p.muted,
                    talking: p.talking,
                    packets_in: p.packets_in,
                    concealed_frames: p.concealed_frames,
                })
                .collect(),
        }
    }
}

async fn rooms(state: &ApiState) -> Result<Vec<RoomView>, HttpResponse> {
    ask(&state.core.conferences, ConferencesMsg::List).await
}

async fn list(req: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    require_auth!(req, state);
    match rooms(&state).await {
        Ok(rooms) => {
            let rooms: Vec<RoomOut> = rooms.into_iter().map(RoomOut::from).collect();
            HttpResponse::Ok().json(serde_json::json!({ "conferences": rooms }))
        }
        Err(response) => response,
    }
}

async fn get(req: HttpRequest, state: web::Data<ApiState>, number: web::Path<String>) -> HttpResponse {
    require_auth!(req, state);
    match rooms(&state).await {
        Ok(rooms) => match rooms.into_iter().find(|r| r.number == *number) {
            Some(room) => HttpResponse::Ok().json(RoomOut::from(room)),
            None => error(StatusCode::NOT_FOUND, format!("no conference room {number}")),
        },
        Err(response) => response,
    }
}

async fn control(state: &ApiState, room: String, control: Control) -> HttpResponse {
    let answer =
        ask(&state.core.conferences, |reply| ConferencesMsg::Control { room: room.clone(), control, reply }).await;
    match answer {
        Ok(Some(true)) => HttpResponse::NoContent().finish(),
        Ok(Some(false)) if matches!(control, Control::Lock { .. }) => {
            error(StatusCode::CONFLICT, format!("conference room {room} is not in use (an empty room is never locked)"))
        }
        Ok(Some(false)) => error(StatusCode::NOT_FOUND, format!("no such participant in conference room {room}")),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no conference room {room}")),
        Err(response) => response,
    }
}

/// A request about one participant (`{number}/participants/{id}`): an id that is not a number
/// names no participant (404).
async fn participant_control(
    state: &ApiState,
    path: web::Path<(String, String)>,
    make: impl FnOnce(u64) -> Control,
) -> HttpResponse {
    let (room, id) = path.into_inner();
    match id.parse() {
        Ok(participant) => control(state, room, make(participant)).await,
        Err(_) => error(StatusCode::NOT_FOUND, format!("{id:?} is not a participant id")),
    }
}

async fn mute(req: HttpRequest, state: web::Data<ApiState>, path: web::Path<(String, String)>) -> HttpResponse {
    require_auth!(req, state);
    participant_control(&state, path, |participant| Control::Mute { participant, muted: true }).await
}

async fn unmute(req: HttpRequest, state: web::Data<ApiState>, path: web::Path<(String, String)>) -> HttpResponse {
    require_auth!(req, state);
    participant_control(&state, path, |participant| Control::Mute { participant, muted: false }).await
}

async fn kick(req: HttpRequest, state: web::Data<ApiState>, path: web::Path<(String, String)>) -> HttpResponse {
    require_auth!(req, state);
    participant_control(&state, path, |participant| Control::Kick { participant }).await
}

async fn lock(req: HttpRequest, state: web::Data<ApiState>, room: web::Path<String>) -> HttpResponse {
    require_auth!(req, state);
    control(&state, room.into_inner(), Control::Lock { locked: true }).await
}

async fn unlock(req: HttpRequest, state: web::Data<ApiState>, room: web::Path<String>) -> HttpResponse {
    require_auth!(req, state);
    control(&state, room.into_inner(), Control::Lock { locked: false }).await
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/conferences", web::get().to(list))
        .route("/api/v1/conferences/{number}", web::get().to(get))
        .route("/api/v1/conferences/{number}/lock", web::post().to(lock))
        .route("/api/v1/conferences/{number}/unlock", web::post().to(unlock))
        .route("/api/v1/conferences/{number}/participants/{id}/mute", web::post().to(mute))
        .route("/api/v1/conferences/{number}/participants/{id}/unmute", web::post().to(unmute))
        .route("/api/v1/conferences/{number}/participants/{id}", web::delete().to(kick));
}
