"""Every user-facing string of the kiosk, in one catalogue ready for translation.

``_()`` is the gettext hook (identity today). Screens and the view-model take their words from
here only; plain words, second person, short (docs/kiosk.md, shared kiosk-style notes).
"""

from __future__ import annotations


def _(text: str) -> str:
    return text


APP_TITLE = _("Microcurrent")

# Start-up and service
CONNECTING = _("Starting up…")
CONNECTING_HINT = _("Connecting to the device.")
SELF_TEST = _("Checking the device")
SELF_TEST_HINT = _("This takes a few seconds. Nothing touches your skin yet.")
SELF_TEST_PASSED = _("The device is ready.")
SELF_TEST_FAILED = _("The device did not pass its check")
SELF_TEST_FAILED_HINT = _(
    "The output stays off. Switch the device off and on again. If this keeps "
    "happening, contact service."
)
SERVICE_MISSING = _("The device is not responding")
SERVICE_MISSING_HINT = _(
    "The output is off. Wait a moment; if this stays, switch the device off and on again."
)
SERVICE_LOST = _("Connection to the device lost")
SERVICE_LOST_HINT = _("The output is off. Reconnecting…")
RETRY = _("Try again")
DETAILS = _("Details for service")
OLD_SERVICE = _("This device software is older than the screen: {what} is not available.")

# Self-test steps shown while it runs (names only; figures are in the service area)
POST_STEPS = (
    _("Output switched off"),
    _("Safety relay"),
    _("Current measurement"),
    _("Test load"),
)

# First use (contraindication screening)
FIRST_USE_TITLE = _("Before your first treatment")
FIRST_USE_HINT = _("Answer each question. If any answer is yes, do not use this device.")
SCREENING_QUESTIONS = (
    ("implant", _("Do you have an implanted electronic device, such as a pacemaker?")),
    ("epilepsy", _("Do you have epilepsy?")),
    ("pregnancy", _("Are you pregnant?")),
    ("cancer_or_broken_skin", _("Do you have cancer, or broken or irritated skin on your face?")),
    (
        "recent_surgery_or_injectables",
        _("Have you had facial surgery, fillers or injections in the last few weeks?"),
    ),
    ("under_18", _("Are you under 18?")),
)
YES = _("Yes")
NO = _("No")
CONTINUE = _("Continue")
SCREENING_STOP_TITLE = _("Please do not use this device")
SCREENING_STOP = {
    "implant": _("Electrical current can disturb an implanted device such as a pacemaker."),
    "epilepsy": _("Electrical stimulation near the head is not advised with epilepsy."),
    "pregnancy": _("Microcurrent has not been shown to be safe during pregnancy."),
    "cancer_or_broken_skin": _("Current must not pass through cancer or broken skin."),
    "recent_surgery_or_injectables": _("Let recent surgery, fillers or injections settle first."),
    "under_18": _("This device is for adults only."),
}
SCREENING_ASK_DOCTOR = _("Ask your doctor before using it. Your answers are recorded.")
# A mistaken tap must not lock a person out until a restart; the new answers are recorded too.
SCREENING_AGAIN = _("I tapped the wrong answer: ask again")
SCREENING_RECORDED = _("Answered on {t}")
SCREENING_NOT_RECORDED = _("Your answers could not be recorded.")

# Home
HOME_TITLE = _("Hello")
START = _("Start")
STREAK = _("{n} days in a row")
STREAK_ONE = _("1 day in a row")
STREAK_NONE = _("Start a streak today")
WEEK = _("{n} this week")
TODAY_LEFT = _("{min} min left today")
TODAY_USED_UP = _("Today's time is used up")
LAST_NONE = _("No treatments yet")
LAST = _("Last: {name}, {when}")
MINUTES = _("{n} min")
HISTORY = _("History")
SETTINGS = _("Settings")
BACK = _("Back")

# Preparation
PREP_TITLE = _("Get ready")
PREP_STEPS = (
    _("Wash your face: no oil, cream or makeup."),
    _("Mist your skin with water or toner. No gel needed."),
    _("Wipe the metal spheres clean."),
    _("Hold the handle so both spheres touch your skin."),
)
READY = _("I'm ready")

# Contact check
CONTACT_TITLE = _("Checking contact")
CONTACT_WORDS = {
    "none": _("Place both spheres on your skin."),
    "dry": _("Mist your skin a little — the contact is dry."),
    "fair": _("Nearly there — keep both spheres flat on the skin."),
    "good": _("Good contact — starting."),
}
CONTACT_LEVEL = {"none": _("No contact"), "dry": _("Dry"), "fair": _("Fair"), "good": _("Good")}

# Treatment
GLIDE = _("Glide")
HOLD = _("Hold")
STEP_OF = _("Step {i} of {n}")
STEP_LEFT = _("This step")
TOTAL_LEFT = _("Total left")
LEVEL = _("Level")
LEVEL_OF = _("up to {n}")
PAUSE = _("Pause")
RESUME = _("Resume")
STOP = _("STOP")
PAUSED = _("Paused — the output is off. Tap Resume to go on.")
CONTACT_LOST = _("Contact lost, timer paused")
RECONTACT = _("Contact back — the current comes back slowly")
RAMPING_DOWN = _("Ending…")
MOVE_ON = _("Move a little")
NEXT_ZONE = _("Next: {zone}")
ZONES = {
    "forehead": _("Forehead"),
    "brows": _("Brows"),
    "cheeks": _("Cheeks"),
    "jawline": _("Jawline"),
    "neck": _("Neck"),
}

# Summary
SUMMARY_TITLE = {
    "finished": _("Treatment complete"),
    "stopped": _("Treatment stopped"),
    "fault": _("Treatment ended by a fault"),
    "estop": _("Treatment ended by the stop button"),
}
SUMMARY_TIME = _("Time")
SUMMARY_MEAN = _("Mean current")
SUMMARY_PEAK = _("Peak current")
SUMMARY_CHARGE = _("Charge")
SUMMARY_NET_DC = _("Net DC")
SUMMARY_CONTACT = _("Contact quality")
DONE = _("Done")

# Fault
FAULT_TITLE = _("The output is off")
FAULT_HOLD = _("Hold to acknowledge")
FAULT_HOLDING = _("Keep holding…")
FAULT_ACK_REFUSED = _("Not yet: {why}")
FAULT_UNKNOWN = _("Something went wrong, so the output was switched off.")
FAULT_ACTION_DEFAULT = _("Acknowledge, then the device checks itself again.")
# The daemon trips LEASE_EXPIRED both when renewals stop (a hung screen: its own words fit) and
# when the screen's connection closes mid-treatment (a crash or kill of the kiosk: detail
# "controller NAME disconnected"); the kiosk words the second case itself.
FAULT_SCREEN_CLOSED = _(
    "The screen app closed during the treatment, so the output was switched off."
)
# UNACKNOWLEDGED's action says "read the history", which the fault screen cannot show: say where.
FAULT_UNACK_ACTION = _("Acknowledge. Then History, on the home screen, shows the treatment.")


def fault_words(fault: dict) -> tuple[str, str]:
    """The fault screen's message and action: the daemon's, except the two cases above."""
    code, detail = str(fault.get("code") or ""), str(fault.get("detail") or "")
    message = str(fault.get("message") or "") or FAULT_UNKNOWN
    action = str(fault.get("action") or "") or FAULT_ACTION_DEFAULT
    if code == "LEASE_EXPIRED" and detail.endswith("disconnected"):
        message = FAULT_SCREEN_CLOSED
    elif code == "UNACKNOWLEDGED":
        action = FAULT_UNACK_ACTION
    return message, action


# History
HISTORY_TITLE = _("History")
HISTORY_EMPTY = _("No treatments yet.")
HISTORY_TOTALS = _("{count} treatments, {min} min in all")
EXPORT = _("Export CSV")
EXPORTED = _("Saved to {path}")
EXPORT_FAILED = _("Could not save: {why}")
END_REASONS = {
    "finished": _("Completed"),
    "stopped": _("Stopped"),
    "fault": _("Fault"),
    "estop": _("Stop button"),
    "interrupted": _("Interrupted"),
    None: _("Running"),
}

# Settings
SETTINGS_TITLE = _("Settings")
SOUND = _("Sound")
SOUND_FIXED = _("Sound: set by the device")
BRIGHTNESS = _("Brightness")
BRIGHTNESS_FAILED = _("Could not change the brightness: {why}")
ON = _("On")
OFF = _("Off")
BLANK_AFTER = _("Screen off after")
SERVICE_AREA = _("Service area")
PIN_PROMPT = _("Enter the service PIN")
PIN_WRONG = _("Wrong PIN")
SCREENING_SEEN = _("Health questions")
VERSIONS = _("Versions")
RECENT_EVENTS = _("Recent events")
RUN_SELF_TEST = _("Run self-test")
# The service area (for a service engineer: figures and keys as the daemon names them)
SVC_SELF_TEST = _("Self-test: {verdict}")
SVC_PASSED = _("passed")
SVC_FAILED = _("FAILED at {step}: {reason}")
SVC_NOT_RUN = _("not run yet")
SVC_LIMITS = _("Limits in force (read-only), from {file}:")
SVC_VERSIONS = _("Versions")
SVC_REALTIME = _("Real-time process")
SVC_EVENTS = _("Recent events")
SVC_LOADING = _("Asking the device…")

# Sim panel
SIM_TITLE = _("Simulated board")
SIM_LIFT = _("Lift\nelectrodes")
SIM_PLACE = _("Place\nelectrodes")
SIM_ESTOP = _("Press\ne-stop")
SIM_ESTOP_RELEASE = _("Release\ne-stop")
SIM_CHARGER = _("Plug\ncharger")
SIM_CHARGER_OUT = _("Unplug\ncharger")
SIM_SKIN = _("Skin")
SIM_FAULTS = _("Faults (red = active, tap again to clear)")
SIM_SKINS = {"normal": _("normal"), "damp": _("damp"), "dry": _("dry"), "sweaty": _("sweaty")}
# The board's fault names (hw.hal.sim.board.FAULTS) as the panel shows them; an unknown name is
# shown with its underscores as spaces.
SIM_FAULT_NAMES = {
    "adc_stuck": _("ADC stuck"),
    "adc_current_stuck": _("ADC current stuck"),
    "dac_stuck": _("DAC stuck"),
    "spi_error": _("SPI error"),
    "shorted_shunt": _("shorted shunt"),
    "welded_relay": _("welded relay"),
    "dead_comparator": _("dead comparator"),
    "overcurrent": _("over current"),
    "open_circuit": _("open circuit"),
    "estop_wire_broken": _("e-stop wire broken"),
    "charger_wire_broken": _("charger wire broken"),
    "estop_bridged": _("e-stop bridged"),
    "charger_bridged": _("charger bridged"),
    "rail_low": _("rail low"),
    "adc_reference": _("ADC reference"),
}

# Refusals and notices
REFUSED = _("Not now: {why}")
NO_REPLY = _("The device did not answer. Try again.")
