"""Peak resident memory of some work, measured in a fresh process from a reset mark.

A test runs a script of its own in a subprocess, starting with :data:`PRELUDE`:
``before = reset_peak()`` just before the work, ``grown_kib(before)`` after it.
"""

PRELUDE = r"""
def kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])

def reset_peak():
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # the high-water mark starts again from here
    return kib("VmRSS")

def grown_kib(before):
    return kib("VmHWM") - before
"""
