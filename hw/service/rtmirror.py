"""The service's copy of what the real-time process publishes (a mixin of ``LoopProxy``).

Each message read from the channel (hw/control/channel.py) updates the proxy's mirror of the
loop: ``state``, ``contact``, ``snapshot``, ``post_result`` (with the self-test's steps, sent as
``post_step`` events before the verdict), ``guard.fault``/``alarm``/``post_valid``/``tripped``,
the replies to commands, the events for the engine's listeners and the timing histograms. Nothing
here sends; a message the real-time process must never send loses the link
(``LoopProxy._lose``).
"""

from __future__ import annotations

import math
import time

from hw.control import channel as C
from hw.control.loop import Snapshot
from hw.safety import FAULT_TEXT, Fault, FaultRecord

POST_STEPS_KEPT = 20  # a self-test has 10 steps: more is a fault of the sender, not kept


def _num(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


class MirrorMixin:
    def _handle(self, m) -> None:
        if isinstance(m, C.State):
            self._on_state(m)
        elif isinstance(m, C.Reply):
            self._replies[m.seq] = m
        elif isinstance(m, C.FaultMsg):
            rec = FaultRecord(m.code, *FAULT_TEXT[m.code], m.detail, m.t_s)
            if m.alarm:
                self.guard.alarm = rec
            else:
                self.guard.fault = rec
        elif isinstance(m, C.Event):
            self._on_event(m)
        elif isinstance(m, C.PostMsg):
            self.post_result = (
                {"passed": True}
                if m.passed
                else {"passed": False, "failed_step": m.failed_step or None, "reason": m.reason}
            )
            self.post_result["steps"], self._post_steps = self._post_steps, []
        elif isinstance(m, C.Hello):
            self.rt_pid, self.sched_note, self._digest = m.pid, m.sched, m.digest
        elif isinstance(m, C.HistMsg):
            self._late_hist, self._gap_hist = m.late, m.gap
            if self.snapshot is not None:
                self.snapshot = self.snapshot._replace(late_hist=m.late, gap_hist=m.gap)
        else:  # a Command: the real-time process never sends one
            self._lose(f"the real-time process sent a {type(m).__name__}")

    def _on_state(self, m: C.State) -> None:
        f, g = m.f, self.guard
        now = time.monotonic()
        self.state_age_ms.append((now - f["now_s"]) * 1000.0)
        self.rt_now_s = f["now_s"]
        self.pub_seq = m.pub_seq
        self.state = m.state
        self.contact = bool(m.flags & C.F_CONTACT)
        self.rt_healthy = bool(m.flags & C.F_HEALTHY)
        g.post_valid = bool(m.flags & C.F_POST_VALID)
        g._tripped = bool(m.flags & C.F_TRIPPED)
        if m.fault is None:
            g.fault = None
        elif g.fault is None or g.fault.code != m.fault:
            g.fault = FaultRecord(m.fault, *FAULT_TEXT[m.fault], "", f["t_s"])  # detail follows
        if m.alarm is None:
            g.alarm = None
        elif g.alarm is None or g.alarm.code != m.alarm:
            g.alarm = FaultRecord(m.alarm, *FAULT_TEXT[m.alarm], "", f["t_s"])
        if not m.flags & C.F_POST_RESULT:
            # No result (a self-test under way or none yet): steps of one whose verdict was lost
            # must not be shown with the next one's (steps and verdict come before a state).
            self.post_result = None
            self._post_steps.clear()
        s = self.snapshot
        if s is None or s.t_s != f["t_s"]:
            self.snapshot = Snapshot(
                t_s=f["t_s"],
                state=m.snap_state,
                target_ua=f["target_ua"],
                amplitude_ua=f["amplitude_ua"],
                measured_ua=f["measured_ua"],
                impedance_ohm=None if math.isnan(f["impedance_ohm"]) else f["impedance_ohm"],
                contact_quality_pct=f["contact_quality_pct"],
                contact=bool(m.flags & C.F_SNAP_CONTACT),
                charge_uc=f["charge_uc"],
                net_charge_uc=f["net_charge_uc"],
                peak_ua=f["peak_ua"],
                active_s=f["active_s"],
                lease_left_ms=None if math.isnan(f["lease_left_ms"]) else f["lease_left_ms"],
                post_valid=bool(m.flags & C.F_SNAP_POST),
                fault=g.fault.as_dict() if g.fault else None,
                residual_ua=f["residual_ua"],
                alarm=g.alarm.as_dict() if g.alarm else None,
                ticks=m.ticks,
                overruns=m.overruns,
                gap_max_ms=f["gap_max_ms"],
                late_hist=self._late_hist,
                gap_hist=self._gap_hist,
            )

    def _on_event(self, m: C.Event) -> None:
        if m.kind == "post_step":  # the verdict (a POST message) follows its steps
            figures = dict(kv.split("=", 1) for kv in m.text.split() if "=" in kv)
            figures.pop("step", None)  # the step's name is its code
            self._post_steps.append({"step": m.code, **{k: _num(v) for k, v in figures.items()}})
            del self._post_steps[:-POST_STEPS_KEPT]
            return
        if m.kind == "fault":
            code = Fault(m.code) if m.code in Fault.__members__ else Fault.INTERNAL
            message, action = FAULT_TEXT[code]
            data = {"code": str(code), "message": message, "action": action, "detail": m.text}
        elif m.kind == "post":
            data = (
                {"passed": True} if m.num else {"passed": False, "step": m.code, "reason": m.text}
            )
        elif m.kind == "contact_lost":
            data = {"reason": m.text}
        elif m.kind == "contact_restored":
            data = {"lifted_s": m.num}
        else:
            data = {"value": m.num, "text": m.text}
        for fn in self._listeners:
            try:
                fn(m.t_s, m.kind, data)
            except Exception:  # noqa: BLE001 - observers never disturb the link
                pass
