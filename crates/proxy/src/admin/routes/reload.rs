//! `POST /api/config/reload` and `POST /api/model/reload`: ask the owner of the configuration
//! (the admin runtime's reloader) or of the model (the control thread) to reload, and pass on
//! its answer.

use hyper::StatusCode;
use tokio::sync::{mpsc, oneshot};

use crate::admin::response::{text, unavailable, unprocessable, Reply};
use crate::admin::ReloadRequest;
use crate::Shared;

/// Re-read the configuration file; the running configuration stays when the new one is invalid.
pub(crate) async fn config(reload: &mpsc::Sender<ReloadRequest>) -> Reply {
    let (tx, rx) = oneshot::channel();
    match reload.send(tx).await {
        Ok(()) => outcome(rx).await,
        Err(_) => unavailable("reloader is not running\n"),
    }
}

/// Reload the model; the running scorer stays when the new model does not load.
pub(crate) async fn model(shared: &Shared) -> Reply {
    let (tx, rx) = oneshot::channel();
    match shared.model_reload.send(tx) {
        Ok(()) => outcome(rx).await,
        Err(_) => unavailable("control loop is not running\n"),
    }
}

/// Answer a reload with its outcome: 200, or 422 with the reasons it was refused.
async fn outcome(rx: oneshot::Receiver<Result<String, String>>) -> Reply {
    match rx.await {
        Ok(Ok(msg)) => text(StatusCode::OK, msg),
        Ok(Err(msg)) => unprocessable(msg),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "reload aborted\n"),
    }
}
