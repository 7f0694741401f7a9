//! A request body that shows each data frame, as it passes, to a watcher that may end
//! the body with a status (tonic answers the call with it). What the layers that look
//! at requests before they are read share: the in-flight bytes budget, early refusal.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;
use tower::BoxError;

/// Looks at a request body's data as it passes.
pub trait Watcher {
    /// `Err` ends the body with that status; the frame is not passed on.
    fn see(&mut self, data: &[u8]) -> Result<(), Status>;
}

pin_project_lite::pin_project! {
    /// `inner`, each data frame shown to `watcher` first.
    pub struct WatchedBody<B, W> {
        #[pin]
        inner: B,
        watcher: W,
    }
}

impl<B, W> WatchedBody<B, W> {
    pub fn new(inner: B, watcher: W) -> WatchedBody<B, W> {
        WatchedBody { inner, watcher }
    }
}

impl<B, W> Body for WatchedBody<B, W>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    W: Watcher,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = match std::task::ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            if let Err(status) = this.watcher.see(data) {
                return Poll::Ready(Some(Err(Box::new(status))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
