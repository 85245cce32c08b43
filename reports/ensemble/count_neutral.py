"""Stop 22: how many items named in the training dialogs' user messages are read as neutral ("I haven't seen X").

Never reads the ReDial test split.
"""

from __future__ import annotations

import sys
from pathlib import Path

from chatbot.dialogue import DialogueManager
from chatbot.justify import TemplateJustifier
from chatbot.understanding import _UNSEEN_CUES

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from heldout_slice import heldout_slice  # noqa: E402


def main() -> None:
    data = heldout_slice()
    interpreter = DialogueManager(data.library, None, lambda c, ch: TemplateJustifier()).tools("movies").interpreter
    messages = items = neutral = cued = 0
    examples: list[str] = []
    for dialog in data.dialogs:
        for turn in dialog.turns:
            if turn.role != "user" or not turn.text.strip():
                continue
            messages += 1
            cued += bool(_UNSEEN_CUES.search(turn.text))
            understanding = interpreter.interpret(turn.text, True)
            items += len(understanding.items)
            for signal in understanding.items:
                if signal.polarity == "neutral":
                    neutral += 1
                    if len(examples) < 12:
                        examples.append(turn.text[:160])
    print(f"user messages {messages}, with a not-seen cue {cued}, linked items {items}, read as neutral {neutral}")
    for example in examples:
        print("  ", example)


if __name__ == "__main__":
    main()
