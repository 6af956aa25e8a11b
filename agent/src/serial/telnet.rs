//! A minimal telnet client layer for consoles served by ser2net in telnet mode, which is how
//! Labgrid's exporter publishes serial ports (`telnet(rfc2217)`): the option negotiation is
//! answered (binary and suppress-go-ahead accepted, everything else refused, RFC 2217
//! sub-negotiations skipped), `IAC` bytes in the board's output are unescaped, and `0xFF`
//! bytes typed at the board are escaped. The board's bytes reach the session unchanged.

/// Interpret as command.
pub(crate) const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const SE: u8 = 240;
const BINARY: u8 = 0;
const ECHO: u8 = 1;
const SGA: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Data,
    Iac,
    Option(u8),
    Sub,
    SubIac,
}

/// The receiving side of a telnet connection: turns what the server sends into the board's
/// bytes plus the answers owed to the server.
#[derive(Debug)]
pub(crate) struct Telnet {
    state: State,
    /// Options enabled on our side (we WILL).
    local: [bool; 256],
    /// Options enabled on the server's side (it WILL).
    remote: [bool; 256],
    /// Options we already refused, so a repeated request is not answered forever.
    refused: [bool; 256],
}

impl Default for Telnet {
    fn default() -> Self {
        Telnet {
            state: State::Data,
            local: [false; 256],
            remote: [false; 256],
            refused: [false; 256],
        }
    }
}

impl Telnet {
    /// The opening request: binary both ways and no go-aheads, so that every byte passes
    /// as it is.
    pub(crate) fn hello(&mut self) -> Vec<u8> {
        self.local[BINARY as usize] = true;
        self.local[SGA as usize] = true;
        vec![
            IAC, WILL, BINARY, IAC, DO, BINARY, IAC, WILL, SGA, IAC, DO, SGA,
        ]
    }

    /// Feeds bytes from the server: board data goes to `data`, negotiation answers to
    /// `replies`. Sequences split across reads are carried over.
    pub(crate) fn feed(&mut self, input: &[u8], data: &mut Vec<u8>, replies: &mut Vec<u8>) {
        for &b in input {
            self.state = match self.state {
                State::Data if b == IAC => State::Iac,
                State::Data => {
                    data.push(b);
                    State::Data
                }
                State::Iac => match b {
                    IAC => {
                        data.push(IAC);
                        State::Data
                    }
                    DO | DONT | WILL | WONT => State::Option(b),
                    SB => State::Sub,
                    // NOP, data mark, go-ahead, ...: nothing to do.
                    _ => State::Data,
                },
                State::Option(cmd) => {
                    self.negotiate(cmd, b, replies);
                    State::Data
                }
                // Sub-negotiations (RFC 2217 notifications: line and modem state) are skipped.
                State::Sub if b == IAC => State::SubIac,
                State::Sub => State::Sub,
                State::SubIac if b == SE => State::Data,
                State::SubIac => State::Sub,
            };
        }
    }

    fn negotiate(&mut self, cmd: u8, opt: u8, replies: &mut Vec<u8>) {
        let o = opt as usize;
        match cmd {
            DO => {
                if matches!(opt, BINARY | SGA) {
                    if !self.local[o] {
                        self.local[o] = true;
                        replies.extend_from_slice(&[IAC, WILL, opt]);
                    }
                } else if !self.refused[o] {
                    self.refused[o] = true;
                    replies.extend_from_slice(&[IAC, WONT, opt]);
                }
            }
            WILL => {
                if matches!(opt, BINARY | SGA | ECHO) {
                    if !self.remote[o] {
                        self.remote[o] = true;
                        // Our own DO for binary and SGA was sent with the hello.
                        if !matches!(opt, BINARY | SGA) {
                            replies.extend_from_slice(&[IAC, DO, opt]);
                        }
                    }
                } else if !self.refused[o] {
                    self.refused[o] = true;
                    replies.extend_from_slice(&[IAC, DONT, opt]);
                }
            }
            DONT if self.local[o] => {
                self.local[o] = false;
                replies.extend_from_slice(&[IAC, WONT, opt]);
            }
            WONT if self.remote[o] => {
                self.remote[o] = false;
                replies.extend_from_slice(&[IAC, DONT, opt]);
            }
            _ => {}
        }
    }
}

/// Escapes bytes for the server: `0xFF` is doubled.
pub(crate) fn escape(data: &[u8], out: &mut Vec<u8>) {
    for &b in data {
        out.push(b);
        if b == IAC {
            out.push(IAC);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_passes_and_iac_is_unescaped() {
        let mut t = Telnet::default();
        let (mut d, mut r) = (Vec::new(), Vec::new());
        t.feed(b"login: \xff\xffx", &mut d, &mut r);
        assert_eq!(d, b"login: \xffx");
        assert!(r.is_empty());
        let mut e = Vec::new();
        escape(b"a\xffb", &mut e);
        assert_eq!(e, b"a\xff\xffb");
    }

    #[test]
    fn negotiation_is_answered_once_and_split_sequences_survive() {
        let mut t = Telnet::default();
        let _ = t.hello();
        let (mut d, mut r) = (Vec::new(), Vec::new());
        // ser2net's opening: WILL ECHO, WILL SGA, DO COM-PORT (44), split mid-sequence.
        t.feed(&[IAC, WILL, ECHO, IAC, WILL], &mut d, &mut r);
        t.feed(&[SGA, IAC, DO, 44, b'h', b'i'], &mut d, &mut r);
        assert_eq!(d, b"hi");
        assert_eq!(r, vec![IAC, DO, ECHO, IAC, WONT, 44]);
        // The same requests again get no answer (no negotiation loop).
        r.clear();
        t.feed(
            &[IAC, WILL, ECHO, IAC, DO, 44, IAC, DO, BINARY],
            &mut d,
            &mut r,
        );
        assert!(r.is_empty(), "{r:?}");
    }

    #[test]
    fn sub_negotiations_are_skipped() {
        let mut t = Telnet::default();
        let (mut d, mut r) = (Vec::new(), Vec::new());
        // RFC 2217 NOTIFY-MODEMSTATE with an escaped 0xFF inside.
        t.feed(
            &[b'a', IAC, SB, 44, 107, IAC, IAC, IAC, SE, b'b'],
            &mut d,
            &mut r,
        );
        assert_eq!(d, b"ab");
    }
}
