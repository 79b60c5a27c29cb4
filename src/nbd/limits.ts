// The limits of one NBD connection, apart from the connection itself
// (connection.ts): the server's options (server.ts) name them, and the
// library's declarations must not pull in node:net's types with them (a
// project importing vdisk need not have @types/node).

export interface ConnectionLimits {
  /** Requests of one connection run at the same time; more wait in the socket (TCP backpressure). */
  maxInFlight: number;
  /** Bytes of read/write data held for running requests of one connection (one request always may run). */
  maxInFlightBytes: number;
  /** Stop reading requests while this much reply data waits to be sent. */
  maxQueuedReplyBytes: number;
  /** A client that has not chosen an export after this long is disconnected. */
  handshakeTimeoutMs: number;
  /**
   * In transmission, a client with no request running that has sent nothing
   * and taken no reply for this long is disconnected, freeing its slot
   * (0: never).
   */
  idleTimeoutMs: number;
}

export const DEFAULT_LIMITS: ConnectionLimits = {
  maxInFlight: 32,
  maxInFlightBytes: 16 << 20,
  maxQueuedReplyBytes: 4 << 20,
  handshakeTimeoutMs: 10_000,
  idleTimeoutMs: 0,
};
