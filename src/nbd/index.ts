/** The NBD server: export any image chain to NBD clients (docs/nbd.md). */
export { startNbdServer, DEFAULT_NBD_PORT, type NbdServer, type NbdServerOptions } from './server.js';
export { makeExport, transmissionFlags, type NbdExport, type ExportOptions } from './export.js';
export { NBD_ERRNO, nbdErrno } from './errno.js';
export { NbdParser, NbdProtocolError, type ClientFrame, type ParserMode } from './parser.js';
export { Negotiation } from './handshake.js';
