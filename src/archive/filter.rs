//! The filter language of `flowstage-collector query`, after nfdump's: terms such as
//! `src ip 10.0.0.1`, `dst port 443`, `net 192.0.2.0/24`, `proto udp`, `as 15169`,
//! `in if 3`, `exporter rtr1`, `bytes > 1000`, combined with `and`, `or`, `not` and
//! parentheses. Parsing is a pure function; errors carry the byte position of the bad
//! token so the caller can point at it.

use std::net::IpAddr;

use ipnet::IpNet;

/// Which side of a flow a term looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
    Either,
}

/// A numeric comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Lt,
    Gt,
    Le,
    Ge,
}

impl Cmp {
    pub fn holds(self, a: u64, b: u64) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Lt => a < b,
            Cmp::Gt => a > b,
            Cmp::Le => a <= b,
            Cmp::Ge => a >= b,
        }
    }
}

/// Where an interface term looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfSide {
    In,
    Out,
    Either,
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    All,
    Not(Box<Filter>),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    /// An address or network (a single address is a /32 or /128).
    Net(Side, IpNet),
    Port(Side, Cmp, u16),
    As(Side, Cmp, u32),
    Proto(u8),
    Interface(IfSide, u32),
    /// An exporter by address; names are resolved before parsing ends.
    Exporter(IpAddr),
    Bytes(Cmp, u64),
    Packets(Cmp, u64),
}

/// A filter that cannot be parsed: what was wrong and where (a byte offset).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter position {position}: {message}")]
pub struct FilterError {
    pub position: usize,
    pub message: String,
}

impl FilterError {
    /// The filter with a caret under the bad token, for the terminal.
    pub fn pointed(&self, text: &str) -> String {
        let column = text
            .get(..self.position.min(text.len()))
            .map_or(0, |s| s.chars().count());
        format!("{}\n  {text}\n  {}^", self, " ".repeat(column))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Token<'a> {
    text: &'a str,
    position: usize,
}

fn tokenize(text: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '(' || c == ')' {
            tokens.push(Token {
                text: &text[i..i + 1],
                position: i,
            });
            chars.next();
        } else if matches!(c, '<' | '>' | '=' | '!') {
            let mut end = i + 1;
            chars.next();
            if let Some(&(j, '=')) = chars.peek() {
                end = j + 1;
                chars.next();
            }
            tokens.push(Token {
                text: &text[i..end],
                position: i,
            });
        } else {
            let mut end = text.len();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_whitespace() || matches!(d, '(' | ')' | '<' | '>' | '=' | '!') {
                    end = j;
                    break;
                }
                chars.next();
            }
            tokens.push(Token {
                text: &text[i..end],
                position: i,
            });
        }
    }
    tokens
}

struct Parser<'a, 'r> {
    tokens: Vec<Token<'a>>,
    next: usize,
    end: usize,
    resolve: &'r dyn Fn(&str) -> Option<IpAddr>,
}

/// Parse a filter; `resolve` turns an exporter name into its address. An empty
/// filter matches every flow.
pub fn parse(text: &str, resolve: &dyn Fn(&str) -> Option<IpAddr>) -> Result<Filter, FilterError> {
    let mut p = Parser {
        tokens: tokenize(text),
        next: 0,
        end: text.len(),
        resolve,
    };
    if p.tokens.is_empty() {
        return Ok(Filter::All);
    }
    let f = p.or()?;
    if let Some(t) = p.peek() {
        return Err(p.error_at(
            t.position,
            format!("unexpected {:?}: expected and, or or the end", t.text),
        ));
    }
    Ok(f)
}

impl<'a> Parser<'a, '_> {
    fn peek(&self) -> Option<Token<'a>> {
        self.tokens.get(self.next).cloned()
    }

    fn take(&mut self) -> Option<Token<'a>> {
        let t = self.peek();
        if t.is_some() {
            self.next += 1;
        }
        t
    }

    fn error_at(&self, position: usize, message: String) -> FilterError {
        FilterError { position, message }
    }

    /// The next token, or an error at the end of the text saying what was expected.
    fn expect(&mut self, what: &str) -> Result<Token<'a>, FilterError> {
        let end = self.end;
        self.take()
            .ok_or_else(|| self.error_at(end, format!("expected {what}, found the end")))
    }

    fn keyword(&self, word: &str) -> bool {
        self.peek()
            .is_some_and(|t| t.text.eq_ignore_ascii_case(word))
    }

    fn or(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.and()?;
        while self.keyword("or") || self.keyword("||") {
            self.take();
            let right = self.and()?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.not()?;
        while self.keyword("and") || self.keyword("&&") {
            self.take();
            let right = self.not()?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Filter, FilterError> {
        if self.keyword("not") || self.keyword("!") {
            self.take();
            return Ok(Filter::Not(Box::new(self.not()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Filter, FilterError> {
        let t = self.expect("a term such as ip, net, port, proto, as, if or exporter")?;
        if t.text == "(" {
            let inner = self.or()?;
            let close = self.expect("')'")?;
            if close.text != ")" {
                return Err(self.error_at(
                    close.position,
                    format!("expected ')', found {:?}", close.text),
                ));
            }
            return Ok(inner);
        }
        let word = t.text.to_ascii_lowercase();
        match word.as_str() {
            "src" | "dst" => {
                let side = if word == "src" { Side::Src } else { Side::Dst };
                let what = self.expect("ip, host, net, port or as")?;
                self.sided(side, what)
            }
            "in" | "out" => {
                let what = self.expect("if")?;
                if !what.text.eq_ignore_ascii_case("if") {
                    return Err(self.error_at(
                        what.position,
                        format!("expected if after {word}, found {:?}", what.text),
                    ));
                }
                let side = if word == "in" {
                    IfSide::In
                } else {
                    IfSide::Out
                };
                Ok(Filter::Interface(side, self.number("an interface index")?))
            }
            "if" => Ok(Filter::Interface(
                IfSide::Either,
                self.number("an interface index")?,
            )),
            "proto" => {
                let p = self.expect("a protocol (tcp, udp, icmp, icmp6, gre, esp or a number)")?;
                let n = match p.text.to_ascii_lowercase().as_str() {
                    "tcp" => 6,
                    "udp" => 17,
                    "icmp" => 1,
                    "icmp6" | "ipv6-icmp" => 58,
                    "gre" => 47,
                    "esp" => 50,
                    "sctp" => 132,
                    other => other.parse::<u8>().map_err(|_| {
                        self.error_at(p.position, format!("unknown protocol {:?}: use tcp, udp, icmp, icmp6, gre, esp, sctp or 0-255", p.text))
                    })?,
                };
                Ok(Filter::Proto(n))
            }
            "exporter" => {
                let e = self.expect("an exporter name or address")?;
                let addr = e
                    .text
                    .parse::<IpAddr>()
                    .ok()
                    .or_else(|| (self.resolve)(e.text))
                    .ok_or_else(|| self.error_at(e.position, format!("unknown exporter {:?}: not an address nor a configured or registered name", e.text)))?;
                Ok(Filter::Exporter(addr))
            }
            "bytes" => {
                let (cmp, n) = self.comparison("a byte count")?;
                Ok(Filter::Bytes(cmp, n))
            }
            "packets" => {
                let (cmp, n) = self.comparison("a packet count")?;
                Ok(Filter::Packets(cmp, n))
            }
            _ => self.sided(Side::Either, t),
        }
    }

    /// ip/host/net/port/as after an optional src or dst.
    fn sided(&mut self, side: Side, what: Token<'a>) -> Result<Filter, FilterError> {
        match what.text.to_ascii_lowercase().as_str() {
            "ip" | "host" => {
                let a = self.expect("an IP address")?;
                let addr = a.text.parse::<IpAddr>().map_err(|_| {
                    self.error_at(a.position, format!("{:?} is not an IP address", a.text))
                })?;
                Ok(Filter::Net(side, IpNet::from(addr)))
            }
            "net" => {
                let a = self.expect("a network such as 192.0.2.0/24")?;
                let net = a
                    .text
                    .parse::<IpNet>()
                    .map(|n| n.trunc())
                    .map_err(|_| self.error_at(a.position, format!("{:?} is not a network such as 192.0.2.0/24 or 2001:db8::/32", a.text)))?;
                Ok(Filter::Net(side, net))
            }
            "port" => {
                let (cmp, n) = self.comparison("a port number")?;
                let port = u16::try_from(n).map_err(|_| {
                    self.error_at(self.tokens[self.next - 1].position, format!("port {n} is above 65535"))
                })?;
                Ok(Filter::Port(side, cmp, port))
            }
            "as" => {
                let (cmp, n) = self.comparison("an AS number")?;
                let asn = u32::try_from(n).map_err(|_| {
                    self.error_at(self.tokens[self.next - 1].position, format!("AS {n} is above 4294967295"))
                })?;
                Ok(Filter::As(side, cmp, asn))
            }
            _ => Err(self.error_at(
                what.position,
                format!("unknown term {:?}: expected ip, host, net, port, as, proto, if, in if, out if, exporter, bytes, packets, not or '('", what.text),
            )),
        }
    }

    /// `[= | < | > | <= | >=] N`
    fn comparison(&mut self, what: &str) -> Result<(Cmp, u64), FilterError> {
        let cmp = match self.peek().map(|t| t.text) {
            Some("=") | Some("==") => Some(Cmp::Eq),
            Some("<") => Some(Cmp::Lt),
            Some(">") => Some(Cmp::Gt),
            Some("<=") => Some(Cmp::Le),
            Some(">=") => Some(Cmp::Ge),
            _ => None,
        };
        if cmp.is_some() {
            self.take();
        }
        let n = self.number(what)?;
        Ok((cmp.unwrap_or(Cmp::Eq), u64::from(n)))
    }

    fn number(&mut self, what: &str) -> Result<u32, FilterError> {
        let t = self.expect(what)?;
        t.text
            .parse::<u32>()
            .map_err(|_| self.error_at(t.position, format!("expected {what}, found {:?}", t.text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(name: &str) -> Option<IpAddr> {
        (name == "rtr1").then(|| "192.0.2.1".parse().expect("address"))
    }

    fn p(s: &str) -> Result<Filter, FilterError> {
        parse(s, &resolve)
    }

    #[test]
    fn precedence_and_parentheses() {
        let f = p("proto udp or proto tcp and dst port 53").expect("parses");
        assert_eq!(
            f,
            Filter::Or(
                Box::new(Filter::Proto(17)),
                Box::new(Filter::And(
                    Box::new(Filter::Proto(6)),
                    Box::new(Filter::Port(Side::Dst, Cmp::Eq, 53))
                ))
            )
        );
        let g = p("(proto udp or proto tcp) and not dst port 53").expect("parses");
        assert!(matches!(g, Filter::And(_, _)));
        assert_eq!(p("").expect("empty"), Filter::All);
        assert_eq!(
            p("exporter rtr1").expect("name"),
            Filter::Exporter("192.0.2.1".parse().expect("ip"))
        );
        assert_eq!(
            p("port>=1024").expect("no spaces"),
            Filter::Port(Side::Either, Cmp::Ge, 1024)
        );
        assert_eq!(
            p("net 10.1.2.3/8").expect("host bits dropped"),
            Filter::Net(Side::Either, "10.0.0.0/8".parse().expect("net"))
        );
    }

    #[test]
    fn errors_point_at_the_bad_token() {
        for (text, position, needle) in [
            ("src ip 10.0.0.300", 7, "not an IP address"),
            ("dst port http", 9, "expected a port number"),
            ("dst port 70000", 9, "above 65535"),
            ("proto foo", 6, "unknown protocol"),
            ("exporter nowhere", 9, "unknown exporter"),
            ("src ip 10.0.0.1 and", 19, "found the end"),
            ("(proto udp", 10, "expected ')'"),
            ("proto udp)", 9, "unexpected \")\""),
            ("colour red", 0, "unknown term"),
            ("in 3", 3, "expected if"),
            ("net 10.0.0.0/33", 4, "not a network"),
        ] {
            let e = p(text).expect_err(text);
            assert_eq!(e.position, position, "{text}: {e}");
            assert!(e.message.contains(needle), "{text}: {e}");
        }
        let e = p("dst port http").expect_err("bad");
        assert_eq!(
            e.pointed("dst port http"),
            "filter position 9: expected a port number, found \"http\"\n  dst port http\n           ^"
        );
    }
}
