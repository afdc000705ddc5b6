"""The requests, once parsed and validated (hw/service/protocol.py), carried out: the session's
(hello, subscribe, bye), status and programs, the treatment's (start, levels, pause, resume, stop,
e-stop, acknowledge, self-test, lease), the simulated board's (``sim``), and the history's
(hw/service/history_commands.py). Errors keep their stable codes (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import TYPE_CHECKING

from hw.control.loop import CommandRefused
from hw.service import protocol as P
from hw.service.engine import EngineRefused, State
from hw.service.history_commands import HistoryCommands
from hw.service.service_info import service_info

if TYPE_CHECKING:
    from hw.service.connection import Client
    from hw.service.daemon import Daemon

log = logging.getLogger("hw")

# The daemon keeps the lease (and refuses another client's control commands) in these states.
LEASED = frozenset(
    {
        State.STARTING,
        State.CONTACT_CHECK,
        State.RAMP_UP,
        State.RUNNING,
        State.PAUSED,
        State.RAMP_DOWN,
        State.SELF_TEST,
    }
)


class Commands:
    """Carries out the requests of the daemon's clients on its engine, loop and history."""

    def __init__(self, daemon: Daemon):
        self.d = daemon
        self.history = HistoryCommands(
            daemon.worker, daemon.recorder.today, daemon.cfg.limits.daily_max_s
        )

    def dispatch(self, client: Client, req: P.Request) -> None:
        """Run one parsed request of ``client`` and send (or arrange) its reply."""
        t_rx = time.monotonic()
        if not client.greeted and req.cmd != "hello":
            client.send(P.reply_error(req.id, P.NOT_HELLO, "say hello first"))
            return
        try:
            result = self._command(client, req, t_rx)
        except P.ProtocolError as e:
            client.send(P.reply_error(req.id, e.code, e.message))
            return
        except (EngineRefused, CommandRefused) as e:
            client.send(P.reply_error(req.id, P.REFUSED, str(e)))
            return
        except Exception as e:  # noqa: BLE001 - a bug answers with an error, never kills the daemon
            log.exception("command %s failed", req.cmd)
            client.send(P.reply_error(req.id, P.INTERNAL, f"{type(e).__name__}"))
            return
        if isinstance(result, concurrent.futures.Future):
            # A history query: its reply (already encoded, off this thread) is sent when done;
            # the client's next request waits for it, so its replies stay in order.
            client.busy = True
            t_submit = self.d.bulk.begun()

            def done(f: concurrent.futures.Future) -> None:
                self.d.bulk.ended(t_submit)
                client.busy = False
                e = f.exception()
                if e is None:
                    client.send(f.result())
                elif isinstance(e, LookupError):
                    client.send(P.reply_error(req.id, P.NOT_FOUND, str(e).strip("'\"")))
                else:
                    client.send(P.reply_error(req.id, P.INTERNAL, type(e).__name__))
                self.d._wake()

            def to_service_thread(f: concurrent.futures.Future) -> None:
                try:
                    self.d._aio.call_soon_threadsafe(done, f)
                except RuntimeError:
                    pass  # the service loop has ended (shutdown): the reply is dropped

            result.add_done_callback(to_service_thread)
            return
        if isinstance(result, asyncio.Future):
            # A start waiting for the history (its record and today's time): settled by the
            # engine on this thread. Its next requests wait (order), but lease, stop and e-stop.
            client.busy = True

            def settled(f: asyncio.Future) -> None:
                client.busy = False
                e = f.exception()
                if e is None:
                    client.send(P.reply_ok(req.id, f.result()))
                elif isinstance(e, (EngineRefused, CommandRefused)):
                    client.send(P.reply_error(req.id, P.REFUSED, str(e)))
                else:
                    client.send(P.reply_error(req.id, P.INTERNAL, type(e).__name__))
                self.d._wake()

            result.add_done_callback(settled)
            return
        client.send(P.reply_ok(req.id, result))
        if client.closing:  # bye: its reply is flushed, nothing after it runs
            client.close()

    def _command(self, client: Client, req: P.Request, t_rx: float):
        cmd, a = req.cmd, req.args
        eng = self.d.engine
        if cmd == "hello":
            if a["protocol"] != P.PROTOCOL_VERSION:
                raise P.ProtocolError(
                    P.VERSION, f"this daemon speaks protocol {P.PROTOCOL_VERSION}"
                )
            client.greeted, client.name = True, a["client"]
            client.want_status = a.get("status", False)
            client.want_events = a.get("events", True)
            return {
                "protocol": P.PROTOCOL_VERSION,
                "daemon": "microcurrent-kiosk hw",
                "sim": self.d.board.sim is not None,
                "lease_ms": self.d.cfg.limits.lease_ms,
                "level_count": self.d.cfg.limits.level_count,
                "sound": eng.sound,
            }
        if cmd == "subscribe":
            client.want_status = a.get("status", client.want_status)
            client.want_events = a.get("events", client.want_events)
            return {}
        if cmd == "bye":
            client.closing = True  # lines pipelined after it are discarded, never run
            client.inbuf.clear()
            return {}
        if cmd == "status":
            return self.d.status()
        if cmd == "programs":
            return {"programs": [program_dict(p) for p in self.d.cfg.programs]}
        if cmd in ("screening", "screening_status"):
            if cmd == "screening" and any(a["answers"].values()):
                eng.contraindicated()  # before it is recorded: no start reads the old one now
            return self.history.screening(cmd, a, req.id)
        if cmd == "sim":
            return self._sim_command(a)
        if cmd == "set_sound":
            return {"sound": eng.set_sound(a["on"])}  # a preference: anyone may change it
        if cmd == "service_info":
            return service_info(self.d)
        if cmd in P.CONTROL_COMMANDS:
            holder = self.d.lease_holder
            if holder is not None and holder is not client and eng.state in LEASED:
                raise P.ProtocolError(P.LEASE_HELD, f"{holder.name} controls the treatment")
            if cmd == "start":
                ticket = eng.start(a["program"], a.get("level"))
                self.d.lease_holder = client
                return self._start_reply(ticket)
            if cmd == "set_level":
                level = eng.set_level(a["level"])
            elif cmd == "level_up":
                level = eng.level_step(+1)
            elif cmd == "level_down":
                level = eng.level_step(-1)
            elif cmd == "pause":
                eng.pause()
                return {"state": str(eng.state)}
            else:  # resume
                eng.resume()
                # No output without a holder: a resume after the holder left takes the lease
                # (the loop armed a fresh deadline with the start; this client renews it).
                self.d.lease_holder = client
                return {"state": str(eng.state)}
            self._track_apply(t_rx)
            return {"level": level}
        if cmd == "lease":
            if self.d.lease_holder is None:
                # Nothing running (the treatment just ended): renewing is harmless.
                return {"lease_ms": self.d.cfg.limits.lease_ms, "held": False}
            if self.d.lease_holder is not client:
                raise P.ProtocolError(P.LEASE_HELD, "this client does not hold the lease")
            self.d.loop.renew_lease()
            return {"lease_ms": self.d.cfg.limits.lease_ms, "held": True}
        if cmd == "stop":
            eng.stop()  # anyone may stop: stopping is always safe
            return {"state": str(eng.state)}
        if cmd == "estop":
            eng.estop(f"e-stop from {client.name}")
            return {"state": "fault"}
        if cmd == "acknowledge":
            eng.acknowledge()
            return {"state": str(eng.state)}
        if cmd == "self_test":
            eng.self_test()
            return {"state": str(eng.state)}
        return self.history.query(cmd, a, req.id)

    def _start_reply(self, ticket: concurrent.futures.Future):
        """The reply to ``start``: when the history answered and the output was asked for (or the
        self-test began), or a REFUSED error when the start could not be recorded."""
        if ticket.done():
            return {"state": ticket.result()}
        out = self.d._aio.create_future()

        def settle(t: concurrent.futures.Future) -> None:
            if out.done():
                return
            e = t.exception()
            if e is None:
                out.set_result({"state": t.result()})
            else:
                out.set_exception(e)

        # The engine settles it on this (the service) thread, inside its tick.
        ticket.add_done_callback(settle)
        return out

    def _track_apply(self, t_rx: float) -> None:
        # For the bench: when does the loop act on a level change? It applies queued commands at
        # the start of its next tick and writes the DAC toward the new target in that same tick.
        def mark() -> None:
            self.d.cmd_applied_s.append(time.monotonic())

        if self.d.rt is not None:
            # The real-time process answered after the tick that applied it (its monotonic time).
            self.d.cmd_applied_s.append(self.d.rt.last_reply_t_s)
            return
        self.d.loop._queue(mark)

    def _sim_command(self, a: dict) -> dict:
        """The desktop simulation panel (docs/protocol.md, ``sim``): only on the simulated board."""
        sim = self.d.board.sim
        if sim is None:
            raise P.ProtocolError(P.NOT_SIM, "sim works only with the simulated board (--sim)")
        from hw.hal.sim.board import FAULTS, SKINS  # the sim package is only needed with --sim

        action = a["action"]
        if action in ("inject", "clear"):
            fault = a.get("fault")
            if fault not in FAULTS:
                raise P.ProtocolError(
                    P.OUT_OF_RANGE, f"sim.fault must be one of {', '.join(FAULTS)}"
                )
            if action == "inject":
                if fault not in sim.active_faults:
                    sim.inject(fault)
            elif fault in sim.active_faults:
                sim.clear(fault)
        elif action == "skin":
            skin = a.get("skin")
            if skin not in SKINS:
                raise P.ProtocolError(P.OUT_OF_RANGE, f"sim.skin must be one of {', '.join(SKINS)}")
            sim.set_skin(skin)
            self.d.sim_skin = skin
        return {
            "faults": sorted(sim.active_faults),
            "skin": self.d.sim_skin,
            "known_faults": list(FAULTS),
            "skins": list(SKINS),
        }


def program_dict(p) -> dict:
    return {
        "id": p.id,
        "name": p.name,
        "description": p.description,
        "duration_s": sum(s.duration_s for s in p.steps),
        "steps": [
            {
                "zone": s.zone,
                "motion": s.motion,
                "duration_s": s.duration_s,
                "max_level": s.max_level,
                "text": s.text,
            }
            for s in p.steps
        ],
    }
