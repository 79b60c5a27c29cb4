/** The NBD server: export any image chain to NBD clients (docs/nbd.md). */
export { startNbdServer, DEFAULT_NBD_PORT, type NbdServer, type NbdServerOptions, type NbdServerStats } from './server.js';
