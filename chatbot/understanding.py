"""Understanding one user message: linked items and attributes with their polarity, numeric constraints,
references to earlier recommendations, and the act the user performs.

Rules, not a model: they are fast, predictable and testable, and the catalog supplies the vocabulary
(titles, genres, people, brands ...), so nothing here assumes movies.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from chatbot.grounding import scan, unsafe_title, unsafe_value
from retrieval.catalog import Catalog
from retrieval.linking import EntityLinker, ItemMention

Act = Literal["recommend", "question", "chitchat", "feedback", "repeat", "reset"]
Polarity = Literal["like", "dislike", "seen", "neutral"]

_NEGATIVE_CUES = re.compile(
    r"\b(?:hate[sd]?|hating|dislike[sd]?|can'?t stand|cannot stand|don'?t (?:like|love|want|enjoy)|"
    r"didn'?t (?:like|love|enjoy)|do not (?:like|want)|did not (?:like|enjoy)|not (?:a fan of|into|interested in)|"
    r"no more|nothing|without|avoid|except|but not|not|no|never|anything but|other than|less|too much|"
    r"sick of|tired of|boring|bored|awful|terrible|worst|not really|rather not)\b",
    re.IGNORECASE,
)
_SEEN_CUES = re.compile(r"\b(?:seen (?:it|that|this)|already (?:seen|watched|read|have|own|tried)|"
                        r"i'?ve (?:seen|watched|read)|watched (?:it|that) already|saw (?:it|that)|have it already|"
                        r"already own)\b", re.IGNORECASE)
# Not knowing an item ("I haven't seen X", "never heard of X"): says nothing of the user's taste, so it is neither a
# dislike (the "not" in it) nor "seen" (the "seen" in it). Past and perfect forms only: "I never watch horror" is
# a habit, and stays a dislike.
_UNSEEN_CUES = re.compile(
    r"\b(?:(?:have|has|had)n'?t|(?:have|has|had) not|never|not yet|not|didn'?t|did not)\s+(?:\w+\s+){0,2}?"
    r"(?:seen|watched|heard (?:of|about)|saw|read|tried)\b|"
    r"\b(?:(?:can'?t|cannot|couldn'?t) say|don'?t think|do not think) (?:that )?i'?(?:ve| have) (?:\w+\s+)?"
    r"(?:seen|watched|heard(?: of)?)\b|"
    r"\bnever got (?:around )?to (?:watching|seeing|reading|trying)\b|\bnot familiar with\b|"
    r"\b(?:have|has) yet to (?:see|watch|read|try)\b",
    re.IGNORECASE,
)
# Only these words may stand between such a cue and the item ("never heard of X", "haven't seen X or Y"): in
# "I never saw the appeal of X" or "I've never seen a better film than X" the cue is not about knowing X.
_UNSEEN_FILLER_RE = re.compile(r"^[\s,]*(?:(?:of|about|ever|yet|even|before|either|neither|nor|or|and|the (?:movie|"
                               r"film|show|book)s?|that|this)\b[\s,]*)*$", re.IGNORECASE)
# The same said just after the item: "X? Never seen it", "X, haven't watched that one".
_UNSEEN_AFTER_RE = re.compile(r"^\W*(?:i\s+|i'?ve\s+|i\s+have\s+)?(?:have(?:n'?t| not)|never|not)\s+(?:\w+\s+)?"
                              r"(?:seen|watched|heard of)\s+(?:it|that|this|that one|this one|them)\b", re.IGNORECASE)
# In a reply to recommendations: "No, I haven't seen it / the second one" (not "I never saw the appeal of it").
_UNSEEN_REACTION_RE = re.compile(r"(?:" + _UNSEEN_CUES.pattern + r")\s+(?:it|that|this|them|those|these|one|any|"
                                 r"either|the\s+(?:first|second|third|fourth|fifth|last|\w+\s+one))\b",
                                 re.IGNORECASE)
# A hedge ("not sure about X") is neither a like nor a dislike of an item.
_HEDGE_RE = re.compile(r"\bnot (?:so |quite |really |too )?sure\b|\bnot certain\b", re.IGNORECASE)
_TASTE_BEFORE_RE = re.compile(r"\b(?:lov|lik|enjoy|adore)", re.IGNORECASE)
_CLAUSE_SPLIT = re.compile(r"[.!?;]|,\s*(?:but|and|though|however)\b|\bbut\b|\bhowever\b|\bthough\b",
                           re.IGNORECASE)
_ORDINALS = {
    "first": 0, "1st": 0, "second": 1, "2nd": 1, "third": 2, "3rd": 2, "fourth": 3, "4th": 3, "fifth": 4,
    "5th": 4, "last": -1, "top": 0,
}
_ORDINAL_RE = re.compile(r"\b(first|1st|second|2nd|third|3rd|fourth|4th|fifth|5th|last|top)\b(?: one)?",
                         re.IGNORECASE)
_NUMBER_REF_RE = re.compile(r"\b(?:number|no\.?|#)\s*([1-5])\b", re.IGNORECASE)
_PRONOUN_RE = re.compile(r"\b(?:it|that one|this one|that|this|its|it's)\b", re.IGNORECASE)
_QUESTION_RE = re.compile(
    r"\?|^\s*(?:who|what|when|where|which|how|is|are|does|do|did|tell me|can you tell|describe|explain)\b|"
    r"\btell me (?:more )?about\b|\bmore about\b|\bwhat'?s it about\b",
    re.IGNORECASE,
)
_RECOMMEND_RE = re.compile(
    r"\b(?:recommend|suggest|suggestion|looking for|look for|want|need|in the mood|mood for|something|"
    r"anything|any ideas|ideas|options|show me|find me|give me|what should|what can|help me|searching|"
    r"search|like|love|enjoy|prefer|fan of|into|another|other|different|else|more like|similar)\b",
    re.IGNORECASE,
)
_DIFFERENT_RE = re.compile(r"\b(?:something (?:else|different)|different|another|other (?:ones|options)|"
                           r"more options|else|new ones|none of (?:these|those|them))\b", re.IGNORECASE)
_REJECT_ALL_RE = re.compile(r"\b(?:none of (?:these|those|them)|not (?:these|those)|don'?t like (?:these|those|any)|"
                            r"neither)\b", re.IGNORECASE)
_REPEAT_RE = re.compile(r"\b(?:again|repeat|remind me|what were (?:they|those)|show (?:them|those) again)\b",
                        re.IGNORECASE)
_RESET_RE = re.compile(r"\b(?:start over|forget (?:everything|all|what i said)|reset|new conversation)\b",
                       re.IGNORECASE)
# Asking, as opposed to telling a taste: only what is asked for becomes a hard filter.
_REQUEST_RE = re.compile(
    r"\b(?:recommend|recommendations?|suggest|suggestions?|looking for|look for|want|wanna|need|in the mood|"
    r"mood for|show me|find me|give me|get me|what about|how about|any|anything|something|please|"
    r"(?:i'?d|we'?d|would)\s+(?:really\s+)?(?:like|love|enjoy|prefer|rather)|can you|could you|do you have|"
    r"is there|are there|"
    r"search(?:ing)?)\b",
    re.IGNORECASE,
)
_INDEFINITE_RE = re.compile(r"\W*(?:a|an|some)\b", re.IGNORECASE)  # "a comedy from the 80s"
_FILLER_WORDS = frozenset({"a", "an", "the", "some", "just", "maybe", "good", "great", "really", "more", "and",
                           "or", "also", "only", "one", "ones", "ok", "okay", "yes", "well", "please"})
_CHITCHAT_RE = re.compile(
    r"^\s*(?:hi|hello|hey|hiya|good (?:morning|afternoon|evening)|thanks|thank you|thx|ok|okay|cool|great|"
    r"nice|bye|goodbye|see you|how are you|lol|haha|yes|no|sure|awesome|perfect)\b[\s!.,?]*"
    r"(?:there|you|so much|a lot|!|\.|how are you\??|\s)*$",
    re.IGNORECASE,
)
_POSITIVE_FEEDBACK_RE = re.compile(r"\b(?:sounds good|i'?ll (?:take|try|watch|buy|get) (?:it|that|this)|"
                                   r"love (?:it|that)|like (?:it|that)|great choice|perfect|that'?s the one)\b",
                                   re.IGNORECASE)
_NEGATIVE_FEEDBACK_RE = re.compile(r"\b(?:not (?:that|this) one|don'?t like (?:it|that|this)|no thanks|"
                                   r"not for me|not interested|nope)\b", re.IGNORECASE)
_MONEY = r"(?:[$€£]\s*)?(\d[\d,]*(?:\.\d+)?)\s*(?:k\b)?\s*(?:dollars|usd|bucks|euros?|pounds)?"
_UNDER_RE = re.compile(rf"\b(?:under|below|less than|cheaper than|no more than|at most|max(?:imum)?|up to|within|"
                       rf"budget (?:of|is)?)\s*{_MONEY}", re.IGNORECASE)
_OVER_RE = re.compile(rf"\b(?:over|above|more than|at least|min(?:imum)?|from)\s*{_MONEY}", re.IGNORECASE)
_BETWEEN_RE = re.compile(rf"\bbetween\s*{_MONEY}\s*(?:and|-|to)\s*{_MONEY}", re.IGNORECASE)
_DECADE_RE = re.compile(r"\b(?:the\s+)?(?:(19|20)(\d)0|'?(\d)0)'?s\b", re.IGNORECASE)
_AFTER_YEAR_RE = re.compile(r"\b(?:after|since|newer than|from|post)\s+((?:19|20)\d\d)\b", re.IGNORECASE)
_BEFORE_YEAR_RE = re.compile(r"\b(?:before|older than|prior to|pre)\s+((?:19|20)\d\d)\b", re.IGNORECASE)
# A bare "new" is left out: "a new movie" mostly means one not seen yet, "I want a new phone" a replacement.
_RECENT_RE = re.compile(r"\b(?:more (?:recent|modern)|recent(?:ly released)?|newer|newest|latest|modern|"
                        r"new releases?|brand[- ]new)\b", re.IGNORECASE)
# "a 12 year old" is an age, not a time.
_OLD_RE = re.compile(r"(?<!year )(?<!years )(?<!year-)\b(?:older|oldies?|old[- ]school|old|classics?|vintage)\b",
                     re.IGNORECASE)
_COMPARATIVE_TIME = {"newer", "older", "more recent", "more modern"}
# Said of a thing ("that's a classic", "the new one", "which is new"), a time word describes it; it asks
# for nothing.
_DESCRIBES_RE = re.compile(
    r"\b(?:is|was|are|were|be|been|that'?s|thats|it'?s|its|the|this|these|those|which|their|his|her)\s+"
    r"(?:(?:a|an|such|so|real|really|true|great|total|big|good|very|pretty|an?other)\s+){0,3}$",
    re.IGNORECASE,
)
_RATING_RE = re.compile(r"\brat(?:ed|ing)\s*(?:of\s*)?(?:above|over|at least|>=?)?\s*(\d(?:\.\d)?)", re.IGNORECASE)
_CURRENCY_HINT = re.compile(r"[$€£]|\b(?:dollars|usd|bucks|euros?|pounds|budget|price|cheap|cost|afford)",
                            re.IGNORECASE)


def _variants(word: str) -> list[str]:
    """A word and its noun forms for adjectives: romantic -> romance, historical -> history, comedic -> comedy."""
    out = [word]
    if word.endswith("tic"):
        out += [word[:-3] + "ce", word[:-3]]
    if word.endswith("ical"):
        out.append(word[:-4] + "y")
    elif word.endswith("ic"):
        out.append(word[:-2] + "y")
    return out


@dataclass
class ItemSignal:
    item_id: str
    polarity: Polarity
    surface: str


@dataclass
class AttributeSignal:
    field: str
    value: str
    polarity: Literal["like", "dislike"]
    surface: str
    start: int = 0
    end: int = 0
    requested: bool = True  # asked for ("I want a comedy"), not a statement of taste ("I like comedies")


@dataclass
class Understanding:
    """What one message says, in terms the dialogue manager acts on."""

    act: Act
    items: list[ItemSignal] = field(default_factory=list)
    attributes: list[AttributeSignal] = field(default_factory=list)
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    # "anything newer?" with no year or item to compare with in the message: the dialogue manager resolves
    # it against the items of the conversation.
    relative_year: Literal["newer", "older"] | None = None
    references: list[int] = field(default_factory=list)
    pronoun: bool = False
    wants_different: bool = False
    rejects_all: bool = False
    reaction: Literal["like", "dislike", "seen"] | None = None
    wish: str = ""
    injection: bool = False  # the message held chat tokens, a forged turn or orders to the assistant


def _clause_of(text: str, start: int) -> tuple[int, int]:
    """The clause (between separators) containing position ``start``."""
    bounds = [0] + [m.end() for m in _CLAUSE_SPLIT.finditer(text)] + [len(text) + 1]
    for low, high in zip(bounds, bounds[1:], strict=False):
        if low <= start < high:
            return low, high
    return 0, len(text)


# What ends a negation's reach, after a comma: the user saying what they do like ("I don't like horror, I like
# comedy", "no Samsung, I want Apple", "no horror, comedy is fine"). A bare ", like X" is an example of what was
# negated ("no Android phones, like the Pixel 7"), except after a degree ("not too stupid, like a good comedy").
_LIKING_RE = re.compile(r"\b(?:i|we|i'?d|we'?d|i'?m|we'?re)\s+(?:(?:really|also|do|would|just|still|much|am|are)\s+)*"
                        r"(?:lik|lov|enjoy|want|prefer|looking for|into)", re.IGNORECASE)
_DEGREE_RE = re.compile(r"\s+(?:too|so|very|overly)\b", re.IGNORECASE)


def _negated(before: str, after: str) -> bool:
    """Whether a negation cue in ``before`` (the clause up to a mention) still reaches the mention; ``after``
    is the rest of the clause."""
    negations = list(_NEGATIVE_CUES.finditer(before))
    if not negations:
        return False
    last = negations[-1]
    rest = before[last.end():]
    comma = rest.find(",")
    if comma < 0:
        return True
    later = rest[comma:]
    degree = last.group(0).lower() == "not" and _DEGREE_RE.match(rest)
    return not (_LIKING_RE.search(later) or _TASTE_AFTER_RE.match(after)
                or (degree and re.search(r"\blike\b", later, re.IGNORECASE)))


def _polarity(text: str, start: int, end: int, untitled: str | None = None, neutral: bool = True) -> Polarity:
    """Like, dislike or seen, from cue words in the mention's own clause before the mention (or just after).

    With ``neutral`` (items), a mention that says nothing of the user's taste is "neutral": not knowing it
    ("I haven't seen X", "never heard of X or Y"; ``untitled`` is ``text`` with the linked titles blanked,
    so that other titles between the cue and this one count as filler) or a hedge ("not sure about X").
    Attributes keep the older reading.
    """
    low, high = _clause_of(text, start)
    before = text[low:start]
    after = text[end:min(high, end + 25)]
    if neutral:
        cues = list(_UNSEEN_CUES.finditer(before))
        if cues:
            if _UNSEEN_FILLER_RE.match((untitled or text)[low + cues[-1].end():start]):
                return "neutral"
        elif (not _NEGATIVE_CUES.search(before) and not _TASTE_BEFORE_RE.search(before)
              and _UNSEEN_AFTER_RE.match(text[end:end + 40])):
            return "neutral"
        if _HEDGE_RE.search(before) and all(_HEDGE_RE.match(before, m.start())
                                            for m in _NEGATIVE_CUES.finditer(before)):
            return "neutral"
    if _SEEN_CUES.search(before) or _SEEN_CUES.search(after):
        return "seen"
    if _negated(before, text[end:high]) or re.match(r"\s*(?:is|was)?\s*(?:boring|awful|terrible|overrated)", after):
        return "dislike"
    return "like"


def _asks(text: str) -> bool:
    """Whether a clause asks for something ("any comedies?", "I want ...", "a sci-fi movie from the 80s",
    a bare "horror movies"), as opposed to telling a taste, a story or a remark ("I like comedies", "I loved X
    with Y", "as a kid of the 80s", "was that Adam Sandler?")."""
    if _REQUEST_RE.search(text) or _INDEFINITE_RE.match(text):
        return True
    words = [w for w in re.findall(r"\b[A-Za-z][A-Za-z']*", text) if w.lower() not in _FILLER_WORDS]
    return len(words) <= 1


def _describes(before: str) -> bool:
    """Whether the words before a value in its clause say what a thing is ("It's a comedy", "that's a
    classic") rather than ask for it ("I want something that is a comedy" still asks)."""
    return bool(_DESCRIBES_RE.search(before)) and not _REQUEST_RE.search(before)


# A taste told in a run-on message ("I like historical movies can you think of a few", "Action is good too
# something like Saw would be great"): the request that follows is for something else.
_TASTE_BEFORE_RE = re.compile(r"\b(?:like|love|enjoy|adore|prefer|into|fan of)\s+(?:[\w'-]+\s+){0,2}$",
                              re.IGNORECASE)
_TASTE_AFTER_RE = re.compile(r"\s*(?:[\w'-]+\s+)?(?:is|are|was|were|'s|'re)\s+(?:(?:also|really|so|pretty|very)\s+)?"
                             r"(?:good|great|fine|ok|okay|cool|nice|fun|awesome|amazing|alright|my favou?rites?|"
                             r"the best)\b", re.IGNORECASE)


def _requested(text: str, start: int, end: int) -> bool:
    """Whether the attribute at ``text[start:end]`` is part of a request (see `_asks`), in its own clause,
    rather than a description of a thing or a taste told on the way."""
    low, high = _clause_of(text, start)
    before, after = text[low:start], text[end:high]
    taste = _TASTE_BEFORE_RE.search(before)
    # "I like anything with X" tells a taste: a request word inside the taste's own words does not ask.
    asking = any(taste is None or m.start() < taste.start() for m in _REQUEST_RE.finditer(before))
    told = not asking and bool(taste or _TASTE_AFTER_RE.match(after))
    return _asks(before + " " + after) and not _describes(before) and not told


def _time_word_asked(text: str, match: re.Match[str]) -> bool:
    """Whether a vague time word ("recent", "older", "classics") asks for items of that time: its clause asks
    (see `_asks`), without a negation before it, and it does not describe a thing ("that's a classic")."""
    low, high = _clause_of(text, match.start())
    before = text[low:match.start()]
    return _asks(text[low:high]) and not _describes(before) and not _NEGATIVE_CUES.search(before)


# A short sentence that only adds to the one before it ("I am not a fan of X. Or Y.", "Is that the one with X?
# And Y?"): it is read as part of that sentence.
_FRAGMENT_RE = re.compile(r"(?:and|or|nor|also|plus)\s+(?:[\w'():&-]+\s*){1,6}(?:too|either|as well)?\s*",
                          re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"[.!?]+")


def _blanked(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """``text`` with each span replaced by spaces (same length, so that positions hold)."""
    out = list(text)
    for start, end in spans:
        out[start:end] = " " * (end - start)
    return "".join(out)


def _join_fragments(text: str) -> str:
    """``text`` with the end of a sentence blanked where the next sentence is only a fragment that adds to
    it (same length, so that positions hold)."""
    ends = list(_SENTENCE_END_RE.finditer(text))
    joins = []
    for n, end in enumerate(ends):
        stop = ends[n + 1].start() if n + 1 < len(ends) else len(text)
        fragment = text[end.end():stop].strip()
        if _FRAGMENT_RE.fullmatch(fragment) and not re.search(r"\bi\b|\bi'", fragment, re.IGNORECASE) \
                and not _REQUEST_RE.search(fragment):
            joins.append(end.span())
    return _blanked(text, joins)


# A yes/no question about a thing named or pointed at ("Is that the one with X?", "It's not a horror, is it?",
# "Does it have X in it?"): the values in it are said of that thing; they neither ask for nor reject anything.
_THING_RE = re.compile(r"\b(?:it|that|this|the one|that one|this one)\b", re.IGNORECASE)
_YES_NO_START_RE = re.compile(r"\s*(?:(?:yes|yeah|no|oh|so|and|but|ok|okay|well|wait|hmm)\W+)*"
                              r"(?:is|was|are|were|does|did|has|had|isn'?t|wasn'?t|doesn'?t|didn'?t)\b",
                              re.IGNORECASE)
_TAG_QUESTION_RE = re.compile(r"\b(?:right|correct|is it|isn'?t it|was it|wasn'?t it|does it|doesn'?t it|"
                              r"did it|didn'?t it|no)\s*$", re.IGNORECASE)


def _asked_of_a_thing(text: str, start: int, title_spans: list[tuple[int, int]]) -> bool:
    """Whether the value at ``start`` sits in a yes/no question about an item (see `_THING_RE`)."""
    ends = list(_SENTENCE_END_RE.finditer(text))
    low = max((m.end() for m in ends if m.end() <= start), default=0)
    end = next((m for m in ends if m.start() >= start), None)
    if end is None or "?" not in end.group(0):
        return False
    sentence = text[low:end.start()]
    if _REQUEST_RE.search(sentence):
        return False
    refers = _THING_RE.search(sentence) or any(low <= s < end.start() for s, _ in title_spans)
    return bool(refers and (_YES_NO_START_RE.match(sentence) or _TAG_QUESTION_RE.search(sentence)))


# Between a title and a value said of it: "Heat (1995), with Al Pacino", "Alien by Ridley Scott".
_OF_TITLE_GAP_RE = re.compile(r"\s*,?\s*(?:with|starring|featuring|by|directed by|from)\s+", re.IGNORECASE)


def _range_asked(text: str) -> bool:
    """Whether a year or rating range in ``text`` sits in a clause that asks for it (see `_asks`)."""
    for pattern in (_DECADE_RE, _AFTER_YEAR_RE, _BEFORE_YEAR_RE, _RATING_RE):
        for match in pattern.finditer(text):
            low, high = _clause_of(text, match.start())
            if _asks(text[low:high]):
                return True
    return False


class MessageInterpreter:
    """Turns a message into an `Understanding` using the catalog's own vocabulary."""

    def __init__(self, catalog: Catalog, linker: EntityLinker) -> None:
        self.catalog = catalog
        self.linker = linker
        numeric: dict[str, int] = {}
        for item in catalog:
            for name in item.numbers:
                numeric[name] = numeric.get(name, 0) + 1
        self.numeric_fields = set(numeric)
        self.price_field = next((f for f in ("price", "cost", "amount") if f in numeric), None)
        self.year_field = "year" if "year" in numeric else None
        self.rating_field = next((f for f in ("rating", "stars", "score") if f in numeric), None)
        years = [i.numbers[self.year_field] for i in catalog if self.year_field and self.year_field in i.numbers]
        self.newest_year: float | None = max(years) if years else None
        # How often each (field, value) occurs, and how many items have each attribute field at all:
        # a value named by the user is read as the field where it is most common, and only fields most
        # items have become hard filters (an item lacking the field would otherwise never qualify).
        self.value_counts: dict[tuple[str, str], int] = {}
        coverage: dict[str, int] = {}
        for item in catalog:
            fields_seen = set()
            for name, value in item.attribute_values():
                key = (name, value.lower())
                self.value_counts[key] = self.value_counts.get(key, 0) + 1
                fields_seen.add(name)
            for name in fields_seen:
                coverage[name] = coverage.get(name, 0) + 1
        self.filter_fields = {name for name, n in coverage.items() if n >= 0.3 * len(catalog)}
        self._stems = self._stem_index()

    def _stem_index(self) -> dict[str, tuple[str, str]]:
        """Stem of single-word values in filterable fields -> (field, value), for "animated" ~ "animation"."""
        from nltk.stem.porter import PorterStemmer

        stemmer = PorterStemmer()
        self._stem = stemmer.stem
        best: dict[str, tuple[int, str, str]] = {}
        for (name, value), count in self.value_counts.items():
            if name in self.filter_fields and value.isalpha() and len(value) >= 4 and count >= 3:
                stem = stemmer.stem(value)
                if count > best.get(stem, (0, "", ""))[0]:
                    best[stem] = (count, name, value)
        return {stem: (name, value) for stem, (_, name, value) in best.items()}

    def _attributes(self, text: str, title_spans: list[tuple[int, int]]) -> list[AttributeSignal]:
        """Attribute values named in the text, each read in its most common field, with polarity."""
        by_value: dict[str, tuple[int, AttributeSignal, int]] = {}
        taken: list[tuple[int, int]] = list(title_spans)
        for mention in self.linker.link_attributes(text):
            if any(s <= mention.start < e for s, e in title_spans):
                continue  # part of a title ("Alien" in "Aliens") is not an attribute wish
            count = self.value_counts.get((mention.field, mention.value.lower()), 0)
            if mention.field in self.filter_fields:
                count += 1_000_000  # prefer a field that can be filtered on
            polarity = "dislike" if _polarity(text, mention.start, mention.end, neutral=False) == "dislike" else "like"
            key = mention.value.lower()
            requested = _requested(text, mention.start, mention.end) or (key in by_value and
                                                                       by_value[key][1].requested)
            if key not in by_value or count > by_value[key][0]:
                by_value[key] = (count, AttributeSignal(mention.field, mention.value, polarity, mention.surface,
                                                        mention.start, mention.end, requested), mention.start)
            else:
                by_value[key][1].requested = requested
            if mention.field in self.filter_fields:
                taken.append((mention.start, mention.end))
        for match in re.finditer(r"[A-Za-z]{4,}", text):
            if any(s <= match.start() < e for s, e in taken):
                continue
            hit = None
            for variant in _variants(match.group(0).lower()):
                hit = self._stems.get(self._stem(variant))
                if hit:
                    break
            if hit and hit[1] not in by_value:
                polarity = ("dislike" if _polarity(text, match.start(), match.end(), neutral=False) == "dislike"
                            else "like")
                by_value[hit[1]] = (0, AttributeSignal(hit[0], hit[1], polarity, match.group(0), match.start(),
                                                       match.end(), _requested(text, match.start(), match.end())),
                                    match.start())
        return [signal for _, signal, _ in sorted(by_value.values(), key=lambda v: v[2])]

    def _describes_title(self, text: str, attribute: AttributeSignal, mentions: list[ItemMention]) -> bool:
        """Whether a value right after a named item is said of it: "like The Hole (2001), with Keira Knightley"
        asks for films like The Hole, not for every Keira Knightley film. Only when the item's record has it."""
        for mention in mentions:
            if mention.end <= attribute.start and _OF_TITLE_GAP_RE.fullmatch(text[mention.end:attribute.start]):
                item = self.catalog[mention.item_id]
                values = item.lists.get(attribute.field) or [item.text.get(attribute.field, "")]
                if attribute.value.lower() in {v.lower() for v in values}:
                    return True
        return False

    def interpret(self, text: str, has_recommendations: bool) -> Understanding:
        """Read one user message.

        Only the message's data is read: chat-template tokens, forged system/assistant turns and
        sentences that give the assistant orders ("ignore previous instructions ...") are dropped first,
        so they can neither set state nor become wishes; ``injection`` says that something was dropped.
        Items whose title is itself an instruction are never linked, nor are such attribute values.
        """
        text, findings = scan(text)
        injection = bool(findings & {"token", "role", "instruction"})
        if not text:
            return Understanding(act="recommend", injection=injection)
        mentions = [m for m in self.linker.link_items(text)
                    if m.item_id in self.catalog and not unsafe_title(self.catalog[m.item_id].title)]
        # Polarity and requests are read with fragments joined to their sentence ("I'm no fan of X. Or Y.").
        joined = _join_fragments(text)
        title_spans = [(m.start, m.end) for m in mentions]
        untitled = _blanked(joined, title_spans)
        items = [ItemSignal(m.item_id, _polarity(joined, m.start, m.end, untitled), m.surface) for m in mentions]
        attributes = [a for a in self._attributes(joined, title_spans) if not unsafe_value(a.value)]
        for attribute in attributes:
            if attribute.requested and self._describes_title(text, attribute, mentions):
                attribute.requested = False
            if _asked_of_a_thing(joined, attribute.start, title_spans):
                attribute.requested, attribute.polarity = False, "like"
        # A budget is always a limit; years and ratings only when asked for ("something from the 80s"), not
        # in a story ("being a kid from the 80s, I like the original better").
        ranges = {name: bounds for name, bounds in self._ranges(text).items()
                  if (name == self.price_field and _CURRENCY_HINT.search(text)) or _range_asked(text)}
        relative: Literal["newer", "older"] | None = None
        if self.year_field and self.year_field not in ranges:
            years = [self.catalog[m.item_id].numbers[self.year_field] for m in mentions
                     if self.year_field in self.catalog[m.item_id].numbers]
            low, high, relative = self._time_words(text, years)
            if low is not None or high is not None:
                ranges[self.year_field] = (low, high)
        references = [_ORDINALS[m.group(1).lower()] for m in _ORDINAL_RE.finditer(text)]
        references += [int(m.group(1)) - 1 for m in _NUMBER_REF_RE.finditer(text)]
        pronoun = bool(_PRONOUN_RE.search(text))
        wants_different = bool(_DIFFERENT_RE.search(text))
        rejects_all = bool(_REJECT_ALL_RE.search(text))
        reaction: Literal["like", "dislike", "seen"] | None = None
        if has_recommendations and (references or pronoun):
            # "I haven't seen it" is no reaction: neither "seen" nor, for its "not", a dislike.
            plain = _UNSEEN_REACTION_RE.sub(" ", text)
            if plain != text:  # "No, I haven't seen it": the "no" answers whether they have seen it
                plain = re.sub(r"^\W*(?:no|nope|nah)\b", " ", plain, flags=re.IGNORECASE)
            if _SEEN_CUES.search(plain):
                reaction = "seen"
            elif _NEGATIVE_FEEDBACK_RE.search(plain) or (references and _NEGATIVE_CUES.search(plain)):
                reaction = "dislike"
            elif _POSITIVE_FEEDBACK_RE.search(plain):
                reaction = "like"

        if _RESET_RE.search(text):
            act: Act = "reset"
        elif has_recommendations and _REPEAT_RE.search(text) and not items:
            act = "repeat"
        elif _QUESTION_RE.search(text) and (references or (pronoun and has_recommendations) or items) and not (
            _RECOMMEND_RE.search(text) and not references and not pronoun
        ) and not wants_different:
            act = "question"
        elif reaction is not None and not _RECOMMEND_RE.search(text) and not wants_different:
            act = "feedback"
        elif items or attributes or ranges or relative or wants_different or rejects_all or _RECOMMEND_RE.search(text):
            act = "recommend"
        elif _CHITCHAT_RE.match(text):
            act = "chitchat"
        else:
            act = "recommend"  # free-text wishes ("a cozy rainy-day story") are requests too
        return Understanding(
            act=act, items=items, attributes=attributes, ranges=ranges, relative_year=relative,
            references=references, pronoun=pronoun,
            wants_different=wants_different, rejects_all=rejects_all, reaction=reaction, wish=text.strip(),
            injection=injection,
        )

    def _time_words(self, text: str, mentioned_years: list[float]
                    ) -> tuple[float | None, float | None, Literal["newer", "older"] | None]:
        """(low, high, relative) of the year range that vague time words ask for.

        "recent" and "classics" are read against the catalog's newest year. A comparative ("newer", "older")
        compares with the items named in the same message; with none, ``relative`` says which way, for the
        dialogue manager to resolve against the conversation.
        """
        if self.year_field is None:
            return None, None, None
        words: tuple[tuple[re.Pattern[str], Literal["newer", "older"]], ...] = (
            (_RECENT_RE, "newer"), (_OLD_RE, "older"))
        for pattern, way in words:
            for match in pattern.finditer(text):
                if not _time_word_asked(text, match):
                    continue
                if " ".join(match.group(0).lower().split()) in _COMPARATIVE_TIME:
                    if mentioned_years and re.match(r"\s*than\b", text[match.end():], re.IGNORECASE):
                        return ((max(mentioned_years) + 1, None, None) if way == "newer"
                                else (None, min(mentioned_years) - 1, None))
                    if mentioned_years:  # "like X or newer": X's year counts
                        return ((min(mentioned_years), None, None) if way == "newer"
                                else (None, max(mentioned_years), None))
                    return None, None, way
                low, high = self.era(way)
                return low, high, None
        return None, None, None

    def era(self, way: Literal["newer", "older"]) -> tuple[float | None, float | None]:
        """The years "recent" (the catalog's last 5) or "old" (30 and more before its newest) stand for."""
        if self.newest_year is None:
            return None, None
        return (self.newest_year - 5, None) if way == "newer" else (None, self.newest_year - 30)

    def _ranges(self, text: str) -> dict[str, tuple[float | None, float | None]]:
        ranges: dict[str, tuple[float | None, float | None]] = {}

        def money(value: str) -> float:
            return float(value.replace(",", ""))

        if self.price_field and (_CURRENCY_HINT.search(text) or not self.year_field):
            if m := _BETWEEN_RE.search(text):
                ranges[self.price_field] = (money(m.group(1)), money(m.group(2)))
            else:
                low = high = None
                if m := _UNDER_RE.search(text):
                    high = money(m.group(1))
                if m := _OVER_RE.search(text):
                    value = money(m.group(1))
                    if not (self.year_field and 1900 <= value <= 2100 and not _CURRENCY_HINT.search(text)):
                        low = value
                if low is not None or high is not None:
                    ranges[self.price_field] = (low, high)
        if self.year_field:
            low = high = None
            starts = []
            for m in _DECADE_RE.finditer(text):  # "an 80's or 90's comedy": any of them
                low_clause, _ = _clause_of(text, m.start())
                if _NEGATIVE_CUES.search(text[low_clause:m.start()]):
                    continue  # "the 80s, not the 90s"
                if m.group(1):
                    starts.append(int(m.group(1) + m.group(2) + "0"))
                else:
                    digit = int(m.group(3))
                    starts.append((2000 if digit <= 2 else 1900) + digit * 10)
            if starts:
                low, high = float(min(starts)), float(max(starts) + 9)
            if m := _AFTER_YEAR_RE.search(text):
                low = float(m.group(1))
            if m := _BEFORE_YEAR_RE.search(text):
                high = float(m.group(1))
            if low is not None or high is not None:
                ranges[self.year_field] = (low, high)
        if self.rating_field and (m := _RATING_RE.search(text)):
            ranges[self.rating_field] = (float(m.group(1)), None)
        return ranges
