/** The IANA-registered NBD port (kept apart so the CLI can name it without loading the server). */
export const DEFAULT_NBD_PORT = 10809;

/** The idle timeout where slots are shared or handed on (--shared > 1 or --persistent): 5 minutes (docs/nbd.md "Idle clients"). */
export const DEFAULT_IDLE_TIMEOUT_MS = 300_000;
