//! A session's hello: who the peer is, the protocol version it speaks and the token it
//! holds, checked before anything else is taken from it.

use quinn_proto::{Connection, Dir, VarInt};
use tracing::debug;

use super::control::control;
use super::delivery::go_away;
use super::session::{Session, Sessions};
use crate::error::{Error, Kind, Result};
use crate::node::{credential, inc, Peer, Presented};
use crate::proto::{self, Message, Role};
use crate::transport;

impl Sessions {
    /// The hello: who the peer is and what token it holds, checked before anything else is
    /// taken from it.
    pub(super) fn hello(
        &mut self,
        conn: &mut Connection,
        s: &mut Session,
        version: u64,
        role: Role,
        token: &[u8],
    ) -> Result<()> {
        if !(proto::MIN_VERSION..=proto::VERSION).contains(&version) {
            return Err(Error::new(
                Kind::Version,
                format!(
                    "protocol version {version} is not supported (this node speaks {} to {})",
                    proto::MIN_VERSION,
                    proto::VERSION
                ),
            ));
        }
        if role == Role::Relay && version < proto::RELAY_MIN_VERSION {
            // A relay enforces who may listen to what it carries: it must hear the rule.
            return Err(Error::new(
                Kind::Version,
                format!(
                    "a relay must speak protocol version {} (streams carry who may listen); \
                     this one says {version}: upgrade it",
                    proto::RELAY_MIN_VERSION
                ),
            ));
        }
        if s.wt.is_some() && role != Role::Listener {
            // A browser's session listens; publishers and relays speak quicast's own ALPN.
            return Err(Error::new(
                Kind::NotAllowed,
                "a WebTransport session may only listen",
            ));
        }
        if role == Role::Publisher && self.node.is_relay() {
            return Err(Error::new(
                Kind::NotAllowed,
                "a relay takes no publishers; publish to the origin",
            ));
        }
        let access = self.node.access();
        let presented = access.present(token);
        let checked = match role {
            Role::Publisher => access.publisher(&presented),
            Role::Relay => access.relay(&presented),
            // A listener's token is checked against each path it asks for.
            Role::Listener => Ok(()),
        };
        if let Err(why) = checked {
            inc(&self.node.stats.auth_refused_total);
            return Err(why.into_error());
        }
        debug!(remote = %s.remote, ?role, "hello");
        match role {
            // A publisher gets its one frame stream; nobody else may open any (a stream the
            // node never reads would hold its receive window for the connection's life).
            Role::Publisher => conn.set_max_concurrent_streams(Dir::Uni, VarInt::from_u32(1)),
            // A child relay carries many streams at once: room for all of them in flight.
            Role::Relay => conn.set_send_window(transport::RELAY_WINDOW),
            Role::Listener => {}
        }
        // A signed token's path proves the right to take a lost publisher's place there.
        s.credential = match (&presented, role) {
            (Presented::Secret, Role::Publisher) => access
                .publish_secret()
                .map(|t| credential(t.expose().as_bytes())),
            (Presented::Signed(Ok(c)), Role::Publisher) => {
                Some(credential(format!("signed:{}", c.path).as_bytes()))
            }
            _ => None,
        };
        s.peer = Some(Peer::new(role, s.remote.ip()).presenting(presented.clone()));
        s.hello = Some((role, presented));
        s.version = version;
        let ok = Message::HelloOk {
            version,
            node: self.node.name().to_string(),
        };
        control(conn, s, &ok);
        if let Some(alternatives) = self.away.clone() {
            go_away(conn, s, alternatives);
        }
        // Streams it opened before it said who it is: stopped, unless it may publish.
        if s.wt.is_none() {
            self.open_frames(conn, s, std::time::Instant::now());
        }
        Ok(())
    }
}
