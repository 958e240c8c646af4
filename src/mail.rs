//! Outgoing mail for alerts, the daily summary and the status report: handed to the
//! local MTA (`sendmail -t -oi`, which postfix provides) or spoken as SMTP to a
//! listener on loopback. The SMTP client is written here: on loopback it needs five
//! commands without TLS or authentication, which is less code and fewer dependencies
//! than a general mail crate.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::config::Config;

/// How mail leaves this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Sendmail(PathBuf),
    Smtp(SocketAddr),
}

impl Transport {
    pub fn from_config(config: &Config) -> Transport {
        match config.alerts.smtp {
            Some(addr) => Transport::Smtp(addr),
            None => Transport::Sendmail(config.alerts.sendmail.clone()),
        }
    }
}

/// Mail comes from the appliance's own host name, so replies and bounces reach root.
pub fn sender() -> String {
    format!("flowstage@{}", crate::config::local_hostname())
}

/// One plain-text message.
#[derive(Debug, Clone)]
pub struct Message {
    pub from: String,
    pub to: String,
    pub subject: String,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("running {program}: {error}")]
    Spawn {
        program: String,
        error: std::io::Error,
    },
    #[error("{program} exited with {status}: {stderr}")]
    Sendmail {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("SMTP to {addr}: {error}")]
    Io {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("SMTP to {addr}: after {command:?} the server said {reply:?}")]
    Refused {
        addr: SocketAddr,
        command: String,
        reply: String,
    },
    #[error("address {0:?} contains a line break or angle bracket")]
    BadAddress(String),
}

impl Message {
    /// The RFC 5322 text: headers, a blank line, the body with CRLF line ends.
    pub fn to_rfc5322(&self) -> String {
        // A header value must not carry a line break (header injection).
        let clean = |s: &str| s.replace(['\r', '\n'], " ");
        let mut text = format!(
            "From: {}\r\nTo: {}\r\nSubject: {}\r\nDate: {}\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
            clean(&self.from),
            clean(&self.to),
            clean(&self.subject),
            chrono::Utc::now().to_rfc2822()
        );
        for line in self.body.lines() {
            text.push_str(line);
            text.push_str("\r\n");
        }
        text
    }
}

fn check_address(a: &str) -> Result<&str, MailError> {
    if a.is_empty() || a.contains(['\r', '\n', '<', '>']) {
        return Err(MailError::BadAddress(a.to_string()));
    }
    Ok(a)
}

/// Send `message` through `transport`.
pub fn send(transport: &Transport, message: &Message) -> Result<(), MailError> {
    check_address(&message.to)?;
    check_address(&message.from)?;
    match transport {
        Transport::Sendmail(program) => sendmail(program, message),
        Transport::Smtp(addr) => smtp(*addr, message),
    }
}

fn sendmail(program: &PathBuf, message: &Message) -> Result<(), MailError> {
    let name = program.display().to_string();
    let mut child = Command::new(program)
        .args(["-t", "-oi"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| MailError::Spawn {
            program: name.clone(),
            error,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let text = message.to_rfc5322().replace("\r\n", "\n");
        stdin
            .write_all(text.as_bytes())
            .map_err(|error| MailError::Spawn {
                program: name.clone(),
                error,
            })?;
    }
    let out = child.wait_with_output().map_err(|error| MailError::Spawn {
        program: name.clone(),
        error,
    })?;
    if !out.status.success() {
        return Err(MailError::Sendmail {
            program: name,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn smtp(addr: SocketAddr, message: &Message) -> Result<(), MailError> {
    let io = |error| MailError::Io { addr, error };
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut writer = stream.try_clone().map_err(io)?;
    let mut reader = BufReader::new(stream);
    // A reply is one or more lines "NNN-text" ending with "NNN text".
    let expect = |reader: &mut BufReader<TcpStream>, command: &str, code: &str| {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).map_err(io)? == 0 {
                break;
            }
            reply.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                break;
            }
        }
        if reply.starts_with(code) {
            Ok(())
        } else {
            Err(MailError::Refused {
                addr,
                command: command.to_string(),
                reply: reply.trim().to_string(),
            })
        }
    };
    expect(&mut reader, "(greeting)", "220")?;
    let host = crate::config::local_hostname();
    for (command, code) in [
        (format!("HELO {host}"), "250"),
        (format!("MAIL FROM:<{}>", message.from), "250"),
        (format!("RCPT TO:<{}>", message.to), "25"),
        ("DATA".to_string(), "354"),
    ] {
        writer
            .write_all(format!("{command}\r\n").as_bytes())
            .map_err(io)?;
        expect(&mut reader, &command, code)?;
    }
    let mut data = String::new();
    for line in message.to_rfc5322().split_inclusive("\r\n") {
        // Dot-stuffing: a line starting with "." gets another one.
        if line.starts_with('.') {
            data.push('.');
        }
        data.push_str(line);
    }
    data.push_str(".\r\n");
    writer.write_all(data.as_bytes()).map_err(io)?;
    expect(&mut reader, "(end of data)", "250")?;
    writer.write_all(b"QUIT\r\n").map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_cannot_be_injected() {
        let m = Message {
            from: "flowstage@host".into(),
            to: "noc@example.net".into(),
            subject: "alert\r\nBcc: evil@example.net".into(),
            body: "line one\n.line two".into(),
        };
        let text = m.to_rfc5322();
        assert!(
            text.contains("Subject: alert  Bcc: evil@example.net\r\n"),
            "{text}"
        );
        assert!(!text.contains("\r\nBcc:"));
        assert!(matches!(
            send(
                &Transport::Sendmail("/nonexistent".into()),
                &Message {
                    to: "a@b>\r\nRCPT TO:<c@d".into(),
                    ..m
                }
            ),
            Err(MailError::BadAddress(_))
        ));
    }
}
