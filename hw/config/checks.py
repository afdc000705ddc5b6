"""The rules of the configuration that tie two or more keys together (the models hold each key in
its own range): each broken rule as (key path, value, what is allowed)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hw.config.model import STAGE_FULL_SCALE_UA, Config


def _cross_checks(cfg: Config) -> Iterator[tuple[str, Any, str]]:
    lim = cfg.limits
    if lim.overcurrent_trip_ua <= lim.max_current_ua:
        yield (
            "limits.overcurrent_trip_ua",
            lim.overcurrent_trip_ua,
            (f"must be above limits.max_current_ua ({lim.max_current_ua})"),
        )
    if lim.hw_overcurrent_ua < lim.overcurrent_trip_ua:
        yield (
            "limits.hw_overcurrent_ua",
            lim.hw_overcurrent_ua,
            (f"must be at least limits.overcurrent_trip_ua ({lim.overcurrent_trip_ua})"),
        )
    if lim.level_max_ua > lim.max_current_ua:
        yield (
            "limits.level_max_ua",
            lim.level_max_ua,
            (f"must be at most limits.max_current_ua ({lim.max_current_ua})"),
        )
    if lim.level_min_ua >= lim.level_max_ua:
        yield (
            "limits.level_min_ua",
            lim.level_min_ua,
            (f"must be below limits.level_max_ua ({lim.level_max_ua})"),
        )
    if lim.probe_current_ua >= lim.level_min_ua:
        yield (
            "limits.probe_current_ua",
            lim.probe_current_ua,
            (f"must be below limits.level_min_ua ({lim.level_min_ua})"),
        )
    if lim.follow_min_ua > lim.level_min_ua:
        yield (
            "limits.follow_min_ua",
            lim.follow_min_ua,
            (f"must be at most limits.level_min_ua ({lim.level_min_ua}) so every level is checked"),
        )
    if lim.min_impedance_ohm >= lim.max_impedance_ohm:
        yield (
            "limits.min_impedance_ohm",
            lim.min_impedance_ohm,
            (f"must be below limits.max_impedance_ohm ({lim.max_impedance_ohm})"),
        )
    fe = cfg.hardware.front_end
    full_ua = fe.dac_ua_per_code * max(fe.dac_zero_code, 4095 - fe.dac_zero_code)
    if full_ua > STAGE_FULL_SCALE_UA * 1.05:
        yield (
            "hardware.front_end.dac_ua_per_code",
            fe.dac_ua_per_code,
            f"the DAC's full scale would exceed the {STAGE_FULL_SCALE_UA:.0f} uA hardware ceiling",
        )
    if (
        fe.adc_ua_per_code * min(fe.adc_zero_code, 4095 - fe.adc_zero_code)
        <= lim.overcurrent_trip_ua
    ):
        yield (
            "hardware.front_end.adc_ua_per_code",
            fe.adc_ua_per_code,
            ("the ADC must read beyond limits.overcurrent_trip_ua or an over-current is invisible"),
        )
    if fe.threshold_ua_per_code * 4095 < lim.hw_overcurrent_ua:
        yield (
            "hardware.front_end.threshold_ua_per_code",
            fe.threshold_ua_per_code,
            (f"DAC channel B must reach limits.hw_overcurrent_ua ({lim.hw_overcurrent_ua})"),
        )
    if cfg.loop.supervisor_period_ms > cfg.loop.stall_ms / 2:
        yield (
            "loop.supervisor_period_ms",
            cfg.loop.supervisor_period_ms,
            (f"must be at most half of loop.stall_ms ({cfg.loop.stall_ms}) to catch a stall"),
        )
    pins = cfg.hardware.pins.model_dump()
    seen: dict[int, str] = {}
    for name, pin in pins.items():
        if pin in seen:
            yield f"hardware.pins.{name}", pin, f"already used by hardware.pins.{seen[pin]}"
        seen[pin] = name
    # SPI0 uses GPIO 7-11 on the Pi: a control line there would fight the bus.
    for name, pin in pins.items():
        if 7 <= pin <= 11:
            yield f"hardware.pins.{name}", pin, "GPIO 7-11 are the SPI0 bus pins"
    chans = cfg.hardware.adc_channels.model_dump()
    seen_ch: dict[int, str] = {}
    for name, ch in chans.items():
        if ch in seen_ch:
            yield f"hardware.adc_channels.{name}", ch, f"already used by {seen_ch[ch]}"
        seen_ch[ch] = name
    dac, adc = cfg.hardware.dac_spi, cfg.hardware.adc_spi
    if (dac.bus, dac.device) == (adc.bus, adc.device):
        yield "hardware.adc_spi.device", adc.device, "DAC and ADC need different chip selects"
    if adc.max_speed_hz > 2_000_000:
        yield (
            "hardware.adc_spi.max_speed_hz",
            adc.max_speed_hz,
            ("the MCP3208 is specified up to 2 MHz at 5 V"),
        )
    tick_ms = 1000.0 / cfg.loop.rate_hz
    if cfg.loop.stall_ms < 4 * tick_ms:
        yield "loop.stall_ms", cfg.loop.stall_ms, f"must be at least 4 ticks ({4 * tick_ms} ms)"
    if cfg.loop.spin_us * 1e-3 >= tick_ms / 2:
        yield "loop.spin_us", cfg.loop.spin_us, "must be under half a tick"
    ids: dict[str, int] = {}
    for i, prog in enumerate(cfg.programs):
        if prog.id in ids:
            yield f"programs[{i}].id", prog.id, f"duplicate of programs[{ids[prog.id]}].id"
        ids.setdefault(prog.id, i)
        total_s = 0.0
        for j, step in enumerate(prog.steps):
            where = f"programs[{i}].steps[{j}]"
            total_s += step.duration_s
            if step.max_level > lim.level_count:
                yield (
                    f"{where}.max_level",
                    step.max_level,
                    (f"must be at most limits.level_count ({lim.level_count})"),
                )
            period_ms = 1000.0 / step.frequency_hz
            if 2 * step.pulse_width_ms > period_ms + 1e-9:
                yield (
                    f"{where}.pulse_width_ms",
                    step.pulse_width_ms,
                    (
                        f"two phases must fit in one period ({period_ms:g} ms at "
                        f"{step.frequency_hz:g} Hz): at most {period_ms / 2:g}"
                    ),
                )
            if step.pulse_width_ms < tick_ms - 1e-9:
                yield (
                    f"{where}.pulse_width_ms",
                    step.pulse_width_ms,
                    (f"must be at least one loop tick ({tick_ms:g} ms)"),
                )
            ratio = step.pulse_width_ms / tick_ms
            if abs(ratio - round(ratio)) > 1e-6:
                yield (
                    f"{where}.pulse_width_ms",
                    step.pulse_width_ms,
                    (
                        f"must be a whole number of loop ticks ({tick_ms:g} ms) so both phases "
                        "carry the same charge"
                    ),
                )
            # One phase of the step at its cap must fit well under the net-charge bound, or a
            # normal pulse (or a lift-off in mid-pair) would trip it.
            span = lim.level_max_ua - lim.level_min_ua
            cap_ua = lim.level_min_ua + span * (min(step.max_level, lim.level_count) - 1) / max(
                1, lim.level_count - 1
            )
            phase_uc = cap_ua * step.pulse_width_ms / 1000.0
            if phase_uc > 0.8 * lim.max_net_charge_uc:
                yield (
                    f"{where}.pulse_width_ms",
                    step.pulse_width_ms,
                    f"one phase at max_level carries {phase_uc:g} uC; it must stay under 80 % of "
                    f"limits.max_net_charge_uc ({lim.max_net_charge_uc})",
                )
            if step.relocate_cue_s and step.relocate_cue_s > step.duration_s:
                yield (
                    f"{where}.relocate_cue_s",
                    step.relocate_cue_s,
                    (f"must not exceed the step's duration_s ({step.duration_s})"),
                )
        if total_s > lim.max_output_s:
            yield (
                f"programs[{i}].steps",
                f"{total_s:g} s in total",
                (f"a program must fit in limits.max_output_s ({lim.max_output_s})"),
            )
