"""Helpers shared by the tests: real servers, model clients, oracles, and how to wait.

Waiting (the rule: wait on conditions, never on the clock; no timing assertions in tests):

- ``waiting.eventually(predicate, timeout, what)`` polls a plain or async predicate until it is
  truthy, returns its value, and fails with ``what`` after ``timeout`` seconds. Use it for every
  "until this holds"; the deadline only bounds a failure.
- Waits with a signal of their own: ``stack.wait_ready`` (the wrapper synced),
  ``stack.wait_caught_up`` (every view at the simulator's RV), ``stack.wait_applied`` (the
  wrapper applied the latest change: pace a script with it), ``ReflectorModel.wait_until`` (a
  model client's store), ``KubectlWatch.wait_for`` (kubectl's output), ``RawWatch.changed``.
- ``waiting.signal_when_called(obj, "method")``: an event set when a request is parked in a
  server's method, to act only once it waits there.
- ``waiting.one_loop_step()``: let ready tasks run once ("the task just created now waits").
- Time-dependent behaviour (intervals, TTLs, back-offs, timed passes) runs on an injected clock
  the test moves: ``fake_clock.FakeClock`` (a ``clock()`` callable, loop-style ``time``/``call_at``
  timers, and ``sleep``).

The only sleeps here are behaviour being modelled, not waits: the model client's back-off
(``reflector.ReflectorModel``, as client-go's) and a fake upstream's bookmark pacing
(``garbage_upstream.GarbageUpstream``).

Modules: ``stack`` (simulator + wrapper on 127.0.0.1), ``faultkit`` (wrappers with custom
settings, raw watches, JSON/metrics readers), ``reflector`` (kube-proxy's informer, modelled),
``oracle`` (the filtered truth), ``churn`` (seeded change scripts), ``kubectl``/``kubectl_watch``
(real kubectl), ``garbage_upstream``/``scripted_upstream`` (fake apiservers), ``waiting``,
``fake_clock``.
"""
