"""Process memory as Linux reports it, shared by the benchmarks (run them as scripts: this folder is on sys.path)."""


def proc_status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB: ``VmRSS`` (resident now) or ``VmHWM`` (the peak resident size)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} field")
