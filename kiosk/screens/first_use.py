"""First use: the contraindication questions, one at a time; any yes goes no further."""

from kivy.properties import DictProperty, NumericProperty
from kivy.uix.screenmanager import Screen

from kiosk import strings as S
from kiosk.screens import load_kv

load_kv(__file__)


class FirstUseScreen(Screen):
    index = NumericProperty(0)
    answers = DictProperty({})

    def question(self, index) -> str:
        if index < len(S.SCREENING_QUESTIONS):
            return S.SCREENING_QUESTIONS[int(index)][1]
        return ""

    def answer(self, yes: bool, vm) -> None:
        key = S.SCREENING_QUESTIONS[int(self.index)][0]
        self.answers[key] = yes
        if self.index + 1 < len(S.SCREENING_QUESTIONS):
            self.index += 1
        else:
            self.index = len(S.SCREENING_QUESTIONS)
            vm.submit_screening(dict(self.answers))

    def restart(self) -> None:
        self.index = 0
        self.answers = {}
