//! The bytes a client is owed: messages framed for its transport, awaiting the
//! socket. It also keeps where every buffered message ends, and the ingest
//! time of every buffered update, so messages are counted and delivery
//! latency recorded when their bytes are actually written (a connection
//! that closes with output unwritten delivered none of it), and batches the
//! counters it reports.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::codec::{self, OpCode};
use crate::metrics::Metrics;
use crate::protocol;
use crate::wall_clock_ns;

/// How messages are wrapped on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// One unmasked text frame per message (RFC 6455).
    WebSocket,
    /// One `id:`/`data:` event per message (Server-Sent Events).
    EventStream,
}

/// Buffered messages a connection keeps room for between bursts.
const ENDS_KEPT: usize = 64;

/// The ingest time of a buffered message that has none to record (an
/// answer, a snapshot, a control frame).
const UNTIMED: i64 = i64::MIN;

/// A transport-neutral output buffer.
#[derive(Debug)]
pub struct Outbox {
    framing: Framing,
    /// Freed whenever everything in it is written, so an idle connection holds
    /// no output buffer at all.
    buffer: Vec<u8>,
    /// Bytes of `buffer` already written.
    written: usize,
    /// How much the last burst held: the next one starts with that capacity
    /// instead of growing by doubling.
    last_burst: usize,
    /// Totals since the start, so latency samples can name where their message ends.
    appended_total: u64,
    written_total: u64,
    /// (end of message in `appended_total` terms, ingest time or [`UNTIMED`])
    /// per buffered message.
    ends: VecDeque<(u64, i64)>,
    latency_scratch: Vec<u64>,
    /// SSE event ids.
    next_event_id: u64,
    metrics: Arc<Metrics>,
    latency_shard: u64,
    unreported_messages: u64,
    unreported_bytes: u64,
    unreported_conflated: u64,
    reported_buffered: usize,
}

impl Outbox {
    pub fn new(framing: Framing, metrics: Arc<Metrics>, latency_shard: u64) -> Self {
        Self {
            framing,
            buffer: Vec::new(),
            written: 0,
            last_burst: 0,
            appended_total: 0,
            written_total: 0,
            ends: VecDeque::new(),
            latency_scratch: Vec::new(),
            next_event_id: 1,
            metrics,
            latency_shard,
            unreported_messages: 0,
            unreported_bytes: 0,
            unreported_conflated: 0,
            reported_buffered: 0,
        }
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> &[u8] {
        &self.buffer[self.written..]
    }

    pub fn buffered(&self) -> usize {
        self.buffer.len() - self.written
    }

    /// Bytes written since the start.
    pub fn written_total(&self) -> u64 {
        self.written_total
    }

    /// Appends a ticker: the version's shared bytes plus this client's suffix.
    /// `ingest_ts_ns` is given for live updates (their latency is recorded when
    /// written) and omitted for snapshots, whose data may be old.
    pub fn push_ticker(
        &mut self,
        prefix: &[u8],
        skipped: u64,
        snapshot: bool,
        ingest_ts_ns: Option<i64>,
    ) {
        let before = self.buffer.len();
        let mut digits = itoa::Buffer::new();
        let suffix = protocol::ticker_suffix(&mut digits, skipped, snapshot);
        self.begin_message(prefix.len() + suffix[0].len() + suffix[1].len());
        self.buffer.extend_from_slice(prefix);
        for part in suffix {
            self.buffer.extend_from_slice(part);
        }
        self.end_message(before, ingest_ts_ns.unwrap_or(UNTIMED));
        self.unreported_conflated += skipped;
    }

    /// Appends one JSON message.
    pub fn push_json(&mut self, json: &[u8]) {
        let before = self.buffer.len();
        self.begin_message(json.len());
        self.buffer.extend_from_slice(json);
        self.end_message(before, UNTIMED);
    }

    /// Appends a WebSocket control frame (ping, pong).
    pub fn push_control(&mut self, opcode: OpCode, payload: &[u8]) {
        debug_assert_eq!(self.framing, Framing::WebSocket);
        let before = self.buffer.len();
        codec::write_frame(&mut self.buffer, opcode, payload);
        self.end_message(before, UNTIMED);
    }

    /// Appends a WebSocket close frame.
    pub fn push_close(&mut self, code: u16, reason: &str) {
        debug_assert_eq!(self.framing, Framing::WebSocket);
        let before = self.buffer.len();
        codec::write_close(&mut self.buffer, code, reason);
        self.end_message(before, UNTIMED);
    }

    /// Appends an SSE comment line (keeps proxies from timing the stream out).
    pub fn push_comment(&mut self, text: &str) {
        debug_assert_eq!(self.framing, Framing::EventStream);
        let before = self.buffer.len();
        self.buffer.extend_from_slice(b": ");
        self.buffer.extend_from_slice(text.as_bytes());
        self.buffer.extend_from_slice(b"\n\n");
        self.appended_total += (self.buffer.len() - before) as u64;
    }

    fn begin_message(&mut self, payload_len: usize) {
        if self.buffer.capacity() == 0 {
            self.buffer.reserve(self.last_burst.max(payload_len + 16));
        }
        match self.framing {
            Framing::WebSocket => codec::write_header(&mut self.buffer, OpCode::Text, payload_len),
            Framing::EventStream => {
                let mut id = itoa::Buffer::new();
                self.buffer.extend_from_slice(b"id: ");
                self.buffer
                    .extend_from_slice(id.format(self.next_event_id).as_bytes());
                self.buffer.extend_from_slice(b"\ndata: ");
                self.next_event_id += 1;
            }
        }
    }

    fn end_message(&mut self, before: usize, ingest_ts_ns: i64) {
        if self.framing == Framing::EventStream {
            self.buffer.extend_from_slice(b"\n\n");
        }
        self.appended_total += (self.buffer.len() - before) as u64;
        self.ends.push_back((self.appended_total, ingest_ts_ns));
    }

    /// Marks `n` more bytes as written: records the latency of every update now
    /// fully on the wire and reclaims space. A fully written buffer is freed:
    /// one allocation per burst costs far less than the `write` it follows,
    /// and thousands of quiet connections then hold nothing.
    pub fn advance(&mut self, n: usize, max_kept_burst: usize) {
        self.written += n;
        self.count_written(n);
        if self.written == self.buffer.len() {
            self.last_burst = self.buffer.len().min(max_kept_burst);
            self.buffer = Vec::new();
            self.written = 0;
            if self.ends.capacity() > ENDS_KEPT {
                self.ends = VecDeque::new();
                self.latency_scratch = Vec::new();
            }
        } else if self.written >= self.buffer.len() / 2 {
            self.buffer.drain(..self.written);
            self.written = 0;
        }
    }

    /// Takes everything pending, as written (for transports that hand off
    /// owned chunks, like an HTTP body).
    pub fn take_pending(&mut self) -> Vec<u8> {
        let mut pending = std::mem::take(&mut self.buffer);
        pending.drain(..self.written);
        self.written = 0;
        self.count_written(pending.len());
        pending
    }

    fn count_written(&mut self, n: usize) {
        self.written_total += n as u64;
        self.unreported_bytes += n as u64;
        self.count_messages_written();
    }

    /// Counts the messages now fully written, and records the latency of
    /// the updates among them.
    fn count_messages_written(&mut self) {
        if self
            .ends
            .front()
            .is_none_or(|&(end, _)| end > self.written_total)
        {
            return;
        }
        let now = wall_clock_ns();
        self.latency_scratch.clear();
        while let Some(&(end, ingest_ts_ns)) = self.ends.front() {
            if end > self.written_total {
                break;
            }
            self.ends.pop_front();
            self.unreported_messages += 1;
            if ingest_ts_ns != UNTIMED {
                self.latency_scratch
                    .push(now.saturating_sub(ingest_ts_ns).max(0) as u64);
            }
        }
        self.metrics
            .delivery_latency
            .record_batch(self.latency_shard, &self.latency_scratch);
    }

    /// Publishes the batched counters and this buffer's size to the metrics.
    pub fn report(&mut self) {
        let metrics = &self.metrics;
        if self.unreported_messages > 0 {
            metrics
                .messages_out
                .fetch_add(self.unreported_messages, Relaxed);
            self.unreported_messages = 0;
        }
        if self.unreported_bytes > 0 {
            metrics.bytes_out.fetch_add(self.unreported_bytes, Relaxed);
            self.unreported_bytes = 0;
        }
        if self.unreported_conflated > 0 {
            metrics
                .updates_conflated
                .fetch_add(self.unreported_conflated, Relaxed);
            self.unreported_conflated = 0;
        }
        let buffered = self.buffered();
        if buffered != self.reported_buffered {
            let delta = buffered as i64 - self.reported_buffered as i64;
            metrics.write_buffered_bytes.fetch_add(delta, Relaxed);
            self.reported_buffered = buffered;
        }
    }

    /// Reports for the last time and takes this buffer out of the gauges.
    pub fn release(&mut self) {
        self.report();
        self.metrics
            .write_buffered_bytes
            .fetch_sub(self.reported_buffered as i64, Relaxed);
        self.reported_buffered = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_stream_messages_are_id_and_data_lines() {
        let mut outbox = Outbox::new(Framing::EventStream, Arc::default(), 0);
        outbox.push_json(br#"{"type":"subscribed"}"#);
        outbox.push_ticker(br#"{"type":"ticker","skipped":"#, 2, false, Some(1));
        let text = String::from_utf8(outbox.take_pending()).unwrap_or_default();
        assert_eq!(
            text,
            "id: 1\ndata: {\"type\":\"subscribed\"}\n\nid: 2\ndata: {\"type\":\"ticker\",\"skipped\":2,\"snapshot\":false}\n\n"
        );
        assert_eq!(outbox.buffered(), 0);
    }

    #[test]
    fn messages_are_counted_and_timed_only_once_fully_written() {
        let metrics = Arc::new(Metrics::default());
        let mut outbox = Outbox::new(Framing::WebSocket, metrics.clone(), 0);
        outbox.push_ticker(b"0123456789", 0, false, Some(wall_clock_ns()));
        let total = outbox.buffered();
        outbox.advance(total - 1, 1024);
        outbox.report();
        assert_eq!(metrics.delivery_latency.summary().count, 0);
        assert_eq!(metrics.messages_out.load(Relaxed), 0, "not sent yet");
        outbox.advance(1, 1024);
        assert_eq!(metrics.delivery_latency.summary().count, 1);
        outbox.report();
        assert_eq!(metrics.messages_out.load(Relaxed), 1);
        assert_eq!(metrics.bytes_out.load(Relaxed), total as u64);
    }
}
