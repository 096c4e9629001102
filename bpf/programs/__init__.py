"""Built-in BPF programs, written with :mod:`ebcap.bpf.asm`.

Each module defines its event layout once, as a numpy structured dtype, next
to the builder of the program that writes it: :mod:`.syscalls` (raw
tracepoint ``sys_enter``) and :mod:`.bench` (a synthetic producer);
:mod:`.common` holds the shared perf/ringbuf output tail.
"""
