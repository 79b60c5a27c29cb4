"""Run a command on a pseudo-terminal and send it a signal.

Usage: pty_signal.py SIGNAL WAIT DELAY COMMAND...
  WAIT  'output': count DELAY from the first output the command writes (a
        progress bar on its way); 'start': from the start.
  DELAY seconds.
Prints one JSON line: {"exit": <os.waitstatus_to_exitcode>, "out": <base64 of all
the terminal received>}. The command runs as the session leader of the
terminal, as under a shell; the signal goes to its pid, as `kill` would send it
(a terminal's Ctrl-C goes to the foreground process group, which is this one
process here).
"""
import base64, json, os, pty, select, signal, sys, time

sig = getattr(signal, sys.argv[1])
wait, delay, argv = sys.argv[2], float(sys.argv[3]), sys.argv[4:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
out = b''
deadline = time.monotonic() + delay if wait == 'start' else None
sent = False
while True:
    timeout = None if sent or deadline is None else max(0.0, deadline - time.monotonic())
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        os.kill(pid, sig)
        sent = True
        continue
    try:
        chunk = os.read(fd, 65536)
    except OSError:  # EIO: the child closed the terminal
        break
    if not chunk:
        break
    out += chunk
    if deadline is None and not sent:
        deadline = time.monotonic() + delay
_, status = os.waitpid(pid, 0)
print(json.dumps({'exit': os.waitstatus_to_exitcode(status), 'out': base64.b64encode(out).decode()}))
