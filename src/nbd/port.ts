/** The IANA-registered NBD port (kept apart so the CLI can name it without loading the server). */
export const DEFAULT_NBD_PORT = 10809;
