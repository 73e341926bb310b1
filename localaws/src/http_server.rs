//! The stand-ins' HTTP/1 server (the fault proxy, the listing server): a free 127.0.0.1 port,
//! a thread of its own running a current-thread runtime, a task per connection; stopped and
//! joined when dropped.

use std::error::Error;
use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

type BoxError = Box<dyn Error + Send + Sync>;

/// A request's query string, decoded, its parameters in order.
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Decodes `query` (without `?`; none is no parameter).
    pub fn parse(query: Option<&str>) -> Query {
        let bytes = query.unwrap_or_default().as_bytes();
        Query(form_urlencoded::parse(bytes).into_owned().collect())
    }

    /// The first value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        let found = self.0.iter().find(|(k, _)| k == name);
        found.map(|(_, v)| v.as_str())
    }

    /// The parameters' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
}

/// A running server.
pub struct LocalServer {
    address: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalServer {
    /// Serves every request with `handle` on a thread named `name`.
    pub fn start<H, F, B, E>(name: &str, handle: H) -> anyhow::Result<LocalServer>
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
        F: Future<Output = Result<Response<B>, E>> + Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        E: Into<BoxError>,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .with_context(|| format!("binding the {name}"))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .with_context(|| format!("starting the {name}'s runtime"))?;
        let (shutdown, mut stop) = oneshot::channel::<()>();
        let serve = async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(e) => return tracing::error!("local server: {e}"),
            };
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let service = hyper::service::service_fn(handle.clone());
                        tokio::spawn(async move {
                            // Errors here are injected resets, or clients going away.
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                }
            }
        };
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || runtime.block_on(serve))
            .with_context(|| format!("starting the {name}'s thread"))?;
        Ok(LocalServer {
            address,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
