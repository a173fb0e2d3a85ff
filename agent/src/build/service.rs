//! The `Builder` gRPC service of the agent (`gantry build` talks to it on the engine
//! socket): receives a build spec and the context stream, runs the builder, streams
//! progress back.
//!
//! Vocabulary: the **context stream** is the tar the CLI writes while walking the context
//! (`.dockerignore` applied on its side); it is received into the builder's scratch dir
//! by a blocking task reading from a channel ([`ChannelReader`]) as chunks arrive, so
//! neither side holds the whole context in memory. The build itself runs on a blocking
//! thread (its `RUN` steps start `gantry runtime` processes); events go back through a
//! bounded channel.

use std::io::{self, Read};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use gantry_proto::engine::builder_server::Builder as BuilderApi;
use gantry_proto::engine::{
    build_event, build_input, BuildEvent, BuildInput, BuildResult, BuildStepDone, BuildStepOutput,
    BuildStepStarted,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::image::ImageStore;

use super::executor::{receive_context, BuildError, BuildRequest, Builder, Event};
use super::net::BuildNet;
use super::run::{NetworkMode, StepRunner};
use super::stages::BuildOptions;

/// A blocking [`Read`] over chunks arriving on a channel; an `Err` item (the client's
/// stream broke) is an I/O error, never a silent early end.
pub struct ChannelReader {
    rx: mpsc::Receiver<Result<Vec<u8>, String>>,
    buf: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    pub fn new(rx: mpsc::Receiver<Result<Vec<u8>, String>>) -> Self {
        ChannelReader {
            rx,
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The service; see the module doc.
pub struct BuildService {
    store: ImageStore,
    runner: Arc<dyn StepRunner>,
    net: Option<BuildNet>,
}

impl BuildService {
    pub fn new(store: ImageStore, runner: Arc<dyn StepRunner>) -> Self {
        BuildService {
            store,
            runner,
            net: None,
        }
    }

    /// Registries, URLs and `RUN` networks for the builds (see [`BuildNet`]).
    pub fn with_net(mut self, net: BuildNet) -> Self {
        self.net = Some(net);
        self
    }
}

fn event_message(e: Event) -> BuildEvent {
    let event = match e {
        Event::Warning(w) => build_event::Event::Warning(w),
        Event::Step { n, label } => {
            build_event::Event::Step(BuildStepStarted { n: n as u32, label })
        }
        Event::Cached { n } => build_event::Event::Cached(n as u32),
        Event::Output { n, data } => {
            build_event::Event::Output(BuildStepOutput { n: n as u32, data })
        }
        Event::Done { n, elapsed } => build_event::Event::Done(BuildStepDone {
            n: n as u32,
            elapsed_micros: elapsed.as_micros() as u64,
        }),
    };
    BuildEvent { event: Some(event) }
}

/// Bad input (the Dockerfile, the context, names) versus the agent's own trouble.
pub fn status_of(e: &BuildError) -> Status {
    match e {
        BuildError::Plan(_)
        | BuildError::Tag { .. }
        | BuildError::Context { .. }
        | BuildError::Url { .. }
        | BuildError::User { .. }
        | BuildError::Layer(_)
        | BuildError::Image { .. }
        | BuildError::ReceiveContext { .. } => Status::invalid_argument(e.to_string()),
        BuildError::RunFailed { .. }
        | BuildError::Pull { .. }
        | BuildError::Download { .. }
        | BuildError::Network { .. } => Status::failed_precondition(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// Removes a received context on drop.
struct Received(PathBuf);

impl Drop for Received {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<BuildEvent, Status>> + Send>>;

#[tonic::async_trait]
impl BuilderApi for BuildService {
    type BuildStream = EventStream;

    async fn build(
        &self,
        request: Request<Streaming<BuildInput>>,
    ) -> Result<Response<Self::BuildStream>, Status> {
        let mut input = request.into_inner();
        let spec = match input.message().await? {
            Some(BuildInput {
                input: Some(build_input::Input::Spec(spec)),
            }) => spec,
            _ => {
                return Err(Status::invalid_argument(
                    "a build starts with its spec, then the context",
                ))
            }
        };
        let network = NetworkMode::parse(&spec.network)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (ctx_tx, ctx_rx) = mpsc::channel::<Result<Vec<u8>, String>>(16);
        tokio::spawn(async move {
            loop {
                let item = match input.message().await {
                    Ok(None) => break,
                    Ok(Some(BuildInput {
                        input: Some(build_input::Input::Context(chunk)),
                    })) => Ok(chunk),
                    Ok(Some(_)) => Err("only context chunks may follow the spec".to_string()),
                    Err(status) => Err(format!("the client's stream broke: {}", status.message())),
                };
                let stop = item.is_err();
                if ctx_tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        });
        let (tx, rx) = mpsc::channel::<Result<BuildEvent, Status>>(64);
        let store = self.store.clone();
        let runner = self.runner.clone();
        let net = self.net.clone();
        tokio::task::spawn_blocking(move || {
            let result = (|| {
                let mut builder = Builder::new(&store, runner.as_ref())?;
                if let Some(net) = net {
                    builder = builder.with_net(net);
                }
                let received = Received(builder.scratch_dir().join(format!(
                    "context-{}-{:016x}",
                    std::process::id(),
                    rand::random::<u64>()
                )));
                receive_context(ChannelReader::new(ctx_rx), &received.0)?;
                let req = BuildRequest {
                    dockerfile: spec.dockerfile,
                    options: BuildOptions {
                        build_args: spec.build_args.into_iter().collect(),
                        target: (!spec.target.is_empty()).then_some(spec.target),
                        ..BuildOptions::default()
                    },
                    context: received.0.clone(),
                    tags: spec.tags,
                    no_cache: spec.no_cache,
                    network,
                };
                let events = tx.clone();
                builder.build(&req, &mut |e| {
                    // A client that went away stops getting events; the build finishes
                    // (or fails) and cleans up all the same.
                    let _ = events.blocking_send(Ok(event_message(e)));
                })
            })();
            let last = match result {
                Ok(out) => Ok(BuildEvent {
                    event: Some(build_event::Event::Result(BuildResult {
                        digest: out.manifest_digest.to_string(),
                        tags: out.tags,
                        steps_run: out.steps_run as u32,
                        steps_cached: out.steps_cached as u32,
                    })),
                }),
                Err(e) => Err(status_of(&e)),
            };
            let _ = tx.blocking_send(last);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_reader_joins_chunks_and_reports_a_broken_stream() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(b"ab".to_vec())).unwrap();
        tx.try_send(Ok(Vec::new())).unwrap();
        tx.try_send(Ok(b"cde".to_vec())).unwrap();
        drop(tx);
        let mut s = String::new();
        ChannelReader::new(rx).read_to_string(&mut s).unwrap();
        assert_eq!(s, "abcde");

        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(b"ab".to_vec())).unwrap();
        tx.try_send(Err("gone".into())).unwrap();
        let mut s = String::new();
        let e = ChannelReader::new(rx).read_to_string(&mut s).unwrap_err();
        assert!(e.to_string().contains("gone"));
    }
}
