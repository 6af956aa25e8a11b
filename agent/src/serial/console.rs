//! Opening a board's console (a tty, a TCP port, a telnet/RFC 2217 port, a program). Each console gets one reader task that forwards what it reads,
//! in order, over a channel to the session that owns the console; nothing is dropped (the
//! channel applies back-pressure to the reader instead).

use crate::config::ConsoleConfig;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc;

/// What the reader task reports.
#[derive(Debug)]
pub enum ConsoleEvent {
    /// Bytes from the board.
    Data(Vec<u8>),
    /// The console closed (end of file or an error); no more data will come.
    Closed(String),
}

/// An open console.
pub struct Console {
    /// Where to send keystrokes.
    pub writer: Box<dyn AsyncWrite + Send + Unpin>,
    /// What the board prints.
    pub rx: mpsc::Receiver<ConsoleEvent>,
    reader: tokio::task::JoinHandle<()>,
    /// The console program, for `command` consoles; killed with the console.
    child: Option<tokio::process::Child>,
    /// A description for logs (`tty /dev/ttyUSB0`).
    pub describe: String,
}

impl Drop for Console {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(c) = &mut self.child {
            let _ = c.start_kill();
        }
    }
}

fn spawn_reader(
    mut r: Box<dyn AsyncRead + Send + Unpin>,
) -> (mpsc::Receiver<ConsoleEvent>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(256);
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) => {
                    let _ = tx.send(ConsoleEvent::Closed("end of file".into())).await;
                    return;
                }
                Ok(n) => {
                    if tx
                        .send(ConsoleEvent::Data(buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(ConsoleEvent::Closed(e.to_string())).await;
                    return;
                }
            }
        }
    });
    (rx, task)
}

fn open_tty(path: &Path, baud: u32) -> std::io::Result<tokio_serial::SerialStream> {
    use tokio_serial::SerialPortBuilderExt;
    tokio_serial::new(path.to_string_lossy(), baud)
        .timeout(Duration::from_millis(100))
        .open_native_async()
        .map_err(std::io::Error::other)
}

async fn connect(address: &str, wait: Duration) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::time::timeout(
        wait.max(Duration::from_secs(5)),
        tokio::net::TcpStream::connect(address),
    )
    .await
    .map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connecting to the console at {address} timed out"),
        )
    })?
    .map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot connect to the console at {address}: {e}"),
        )
    })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// One task per telnet console: it answers the server's negotiation, hands the board's bytes
/// to the session in order and escapes what the session types (written into a local pipe
/// that the task forwards).
fn spawn_telnet(
    stream: tokio::net::TcpStream,
) -> (
    Box<dyn AsyncWrite + Send + Unpin>,
    mpsc::Receiver<ConsoleEvent>,
    tokio::task::JoinHandle<()>,
) {
    use super::telnet::{Telnet, escape};
    use tokio::io::AsyncWriteExt;
    let (tx, rx) = mpsc::channel(256);
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(async move {
        let (mut r, mut w) = stream.into_split();
        let mut t = Telnet::default();
        let closed = |why: String| ConsoleEvent::Closed(why);
        if let Err(e) = w.write_all(&t.hello()).await {
            let _ = tx.send(closed(e.to_string())).await;
            return;
        }
        let (mut rbuf, mut wbuf) = (vec![0u8; 16 * 1024], vec![0u8; 4096]);
        let mut typing = true;
        loop {
            tokio::select! {
                got = r.read(&mut rbuf) => {
                    let n = match got {
                        Ok(0) => {
                            let _ = tx.send(closed("end of file".into())).await;
                            return;
                        }
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let _ = tx.send(closed(e.to_string())).await;
                            return;
                        }
                    };
                    let (mut data, mut replies) = (Vec::new(), Vec::new());
                    t.feed(&rbuf[..n], &mut data, &mut replies);
                    if !replies.is_empty()
                        && let Err(e) = w.write_all(&replies).await
                    {
                        let _ = tx.send(closed(e.to_string())).await;
                        return;
                    }
                    if !data.is_empty() && tx.send(ConsoleEvent::Data(data)).await.is_err() {
                        return;
                    }
                }
                got = theirs.read(&mut wbuf), if typing => match got {
                    Ok(0) | Err(_) => typing = false,
                    Ok(n) => {
                        let mut out = Vec::with_capacity(n + 8);
                        escape(&wbuf[..n], &mut out);
                        if let Err(e) = w.write_all(&out).await {
                            let _ = tx.send(closed(e.to_string())).await;
                            return;
                        }
                    }
                },
            }
        }
    });
    (Box::new(ours), rx, task)
}

/// Opens a console. A `tty` that does not exist yet (a pty created at power-on) is retried
/// for up to `wait`.
pub async fn open(
    cfg: &ConsoleConfig,
    argv: Option<Vec<String>>,
    wait: Duration,
) -> std::io::Result<Console> {
    match cfg {
        ConsoleConfig::Tty { path, baud } => {
            let end = tokio::time::Instant::now() + wait;
            let stream = loop {
                match open_tty(path, *baud) {
                    Ok(s) => break s,
                    Err(e) if tokio::time::Instant::now() < end => {
                        tracing::debug!(error = %e, path = %path.display(), "console not there yet");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        return Err(std::io::Error::new(
                            e.kind(),
                            format!("cannot open the serial console {}: {e}", path.display()),
                        ));
                    }
                }
            };
            let (r, w) = tokio::io::split(stream);
            let (rx, reader) = spawn_reader(Box::new(r));
            Ok(Console {
                writer: Box::new(w),
                rx,
                reader,
                child: None,
                describe: format!("tty {} at {baud} baud", path.display()),
            })
        }
        ConsoleConfig::Tcp { address } => {
            let stream = connect(address, wait).await?;
            let (r, w) = stream.into_split();
            let (rx, reader) = spawn_reader(Box::new(r));
            Ok(Console {
                writer: Box::new(w),
                rx,
                reader,
                child: None,
                describe: format!("tcp {address}"),
            })
        }
        ConsoleConfig::Telnet { address } => {
            let stream = connect(address, wait).await?;
            let (writer, rx, reader) = spawn_telnet(stream);
            Ok(Console {
                writer,
                rx,
                reader,
                child: None,
                describe: format!("telnet {address}"),
            })
        }
        ConsoleConfig::Command { .. } => {
            let argv = argv.unwrap_or_default();
            let Some(prog) = argv.first() else {
                return Err(std::io::Error::other("the console command is empty"));
            };
            let mut child = tokio::process::Command::new(prog)
                .args(&argv[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot start the console program `{prog}`: {e}"),
                    )
                })?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(std::io::Error::other("no pipes to the console program"));
            };
            let (rx, reader) = spawn_reader(Box::new(stdout));
            Ok(Console {
                writer: Box::new(stdin),
                rx,
                reader,
                child: Some(child),
                describe: format!("command {argv:?}"),
            })
        }
    }
}
