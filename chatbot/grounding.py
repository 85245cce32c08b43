"""Fact check of a justification against one item's record and the user's own words.

A *claim* is a piece of text that states a checkable fact: a number (years, prices, ratings, sizes),
a term of the catalog's vocabulary (genres, people, brands, tags ... whatever list values and short
strings the catalog has), the title of a catalog item, a capitalised name (several words, or one word
inside a sentence), or a relation or accolade (sequel, remake, based on, award, best-seller). A claim is
*supported* when the item's record (title, field names, text, list values, numbers) or the user's
own words contain it; numbers are compared numerically, so ``$1,299.99``, ``1299.99`` and
``$1,300`` (rounded) all match a record price of 1299.99.

The check is deliberately one-sided: it never proves a sentence true, but it catches the usual
inventions of a small LM (a wrong year, an actor from another film, another item's title).

Catalog text and user messages are untrusted data. `scan` reduces such text to its data (chat-template
tokens, forged system/assistant turns and orders to the assistant removed), `sanitise_item` does so for a
record, `unsafe_title` marks records that must never be shown, and `GroundingChecker.injected` finds
generated sentences that repeat an injection, carry a link or quote a system prompt.

>>> checker = GroundingChecker(catalog)  # doctest: +SKIP
>>> checker.unsupported_claims("Heat (1995) stars Tom Hanks.", catalog["176314"])  # doctest: +SKIP
['Tom Hanks']
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

from retrieval.catalog import MAX_SHORT_STRING, Catalog, Item

# Words that are never claims on their own: function words, pronouns, sentence starters, days,
# months and generic words of recommendations. Vocabulary values equal to one of them are dropped
# and capitalised runs are split at them.
COMMON_WORDS = frozenset("""
a about above after again against all also although always am an and another any are as at be because been
before being below between both but by can could did do does doing done down during each either else enough
even ever every few for from further had has have having he her here hers herself him himself his how however
i if in into is it its itself just least less let like likes liked loved loves many may me might mine more
most much must my myself neither no nor not now of off on once one only or other our ours ourselves out over
own perhaps quite rather really same she should since so some such than that the their theirs them
themselves then there these they this those though through thus to too under until up upon us very was we
were what whatever when where whether which while who whom whose why will with within without would yet you
your yours yourself yourselves hello hi hey yes yeah ok okay please thanks thank sure well oh wow
love enjoy enjoys enjoyed want wants wanted watch watched see seen try tried fit fits suits suit pick
recommend recommended recommendation recommendations suggest suggestion choice option
good great best better nice fine fun cool new old big small little lot lots kind kinds sort type types
movie movies film films show shows series book books item items product products thing things something
story stories one ones two three first second last next part way time times day days year years people
monday tuesday wednesday thursday friday saturday sunday january february march april june july august
september october november december
acting actor actors actress actresses cast character characters plot script dialogue dialog music soundtrack
score ending twist scene scenes performance performances visual visuals atmosphere style humor humour
funny interesting entertaining amazing awesome beautiful classic favorite favourite original quality value
""".split())
# Identifier-like fields are never stated in prose; their values would only add noise.
_ID_FIELD_RE = re.compile(r"(^|_)(id|ids|url|urls|link|links|image|images|sku|asin|isbn)$", re.IGNORECASE)
_YEAR_SUFFIX_RE = re.compile(r"\s*\((?:1[89]\d\d|20\d\d)\)\s*$")
_NUMBER_RE = re.compile(
    r"(?<![\w.,])(?:(?P<cur>[$€£¥])\s?)?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    r"(?P<decade>s\b)?(?P<scale>\s*/\s*\d+(?:\.\d+)?)?"
)
# Capitalised words, accents included ("Gutiérrez", "Schönberg", "Émile"); a word glued to digits
# ("S24", "G42") is a model number, not part of a name.
_NAME_WORD = r"(?:[A-Z]\.|[A-ZÀ-ÖØ-ÞĀ-Ž][^\W\d_]*(?:['’\-][^\W\d_]+)*(?!\w))"
_NAME_RE = re.compile(rf"{_NAME_WORD}(?:\s+{_NAME_WORD})+")
# A capitalised word alone inside a sentence (the word before it is lower-case, the word after it is
# not capitalised): a brand, studio or place the LM may have made up ("a Disney classic").
_LONE_NAME_RE = re.compile(rf"(?:^|\s)[a-z]\S*\s+(?P<name>{_NAME_WORD})(?!\s+[A-ZÀ-ÖØ-ÞĀ-Ž])")
# What an item is derived from, related to or won: checkable facts, and a small LM's favourite inventions
# ("it's a sequel to the film", "an award-winning drama"). Domain-free: products have awards and
# best-sellers too.
_RELATION_RE = re.compile(
    r"\b(?:sequels?|prequels?|remakes?|reboots?|spin-?offs?|trilog(?:y|ies)|franchises?|adaptations?|adapted|"
    r"based on|true story|awards?|award-winning|oscars?|emmys?|grammys?|golden globes?|nominat(?:ed|ions?)|"
    r"best-?sell(?:ers?|ing))\b", re.IGNORECASE)
_TOKEN_RE = re.compile(r"[^\W_]+")
_POSSESSIVE_RE = re.compile(r"['’]s\b")
_MAX_TERM_WORDS = 12


def normalise(text: str) -> str:
    """Lower-case words separated by single spaces: ``"Sci-Fi, Ocean's"`` -> ``"sci fi ocean"``."""
    return " ".join(_TOKEN_RE.findall(_POSSESSIVE_RE.sub("", text.lower())))


def _cased_tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(_POSSESSIVE_RE.sub("", text))


def _ngrams(tokens: Sequence[str], max_n: int) -> Iterable[str]:
    for n in range(1, max_n + 1):
        for start in range(len(tokens) - n + 1):
            yield " ".join(tokens[start:start + n])


def _contains(haystack: str, needle: str) -> bool:
    """Whole-word containment of normalised texts (both already normalised)."""
    return bool(needle) and f" {needle} " in f" {haystack} "


def stem(word: str) -> str:
    """Crude plural folding so that 'comedies'/'comedy' and 'thrillers'/'thriller' compare equal."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("es") and word[:-2].endswith(("s", "x", "ch", "sh")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def record_text(item: Item) -> str:
    """Everything an item's record says, as one text (numbers excluded: they are compared numerically)."""
    parts = [item.title]
    parts += [name.replace("_", " ") for name in (*item.text, *item.lists, *item.numbers)]
    parts += item.text.values()
    for values in item.lists.values():
        parts += values
    return "\n".join(parts)


def numbers_in(text: str) -> list[float]:
    """Every number written in a text (currency signs and thousands separators understood)."""
    return [float(m.group("num").replace(",", "")) for m in _NUMBER_RE.finditer(text)]


def _number_matches(claim: str, value: float, known: Iterable[float]) -> bool:
    decimals = len(claim.split(".", 1)[1]) if "." in claim else 0
    for number in known:
        if abs(number - value) <= 1e-6 * max(1.0, abs(value)) or round(number, decimals) == value:
            return True
    return False


class GroundingChecker:
    """Finds claims in a text that neither an item's record nor the user's words support.

    Built once per catalog: it collects the catalog's vocabulary (list values and short string values,
    lower-cased, minus common words and identifier fields) and all titles, so that it knows which words
    are facts about *some* item.

    Lower-case values count only from category-like fields (at most ``max_category_values`` distinct
    values, e.g. genre, category): free-form tag fields hold everyday adjectives ("dark", "unique",
    "different") that would make almost every sentence "unsupported". Capitalised values (people,
    brands, places) count from every field.
    """

    def __init__(self, catalog: Catalog | Iterable[Item], max_category_values: int = 200) -> None:
        self.vocabulary: dict[str, str] = {}
        self.titles: dict[str, str] = {}
        self.short_titles: dict[str, str] = {}
        values: dict[str, set[str]] = {}
        for item in catalog:
            self._add_title(item.title)
            for name, value in item.attribute_values():
                if not _ID_FIELD_RE.search(name):
                    values.setdefault(name, set()).add(value)
        for field_values in values.values():
            category_like = len({v.lower() for v in field_values}) <= max_category_values
            for value in sorted(field_values):
                if category_like or value != value.lower():
                    self._add_term(value)

    def _add_term(self, value: str) -> None:
        key = normalise(value)
        words = key.split()
        if not words or len(words) > _MAX_TERM_WORDS or len(value) > MAX_SHORT_STRING:
            return
        if len(key) < 3 or all(w in COMMON_WORDS or w.isdigit() for w in words):
            return
        if _NUMBER_RE.fullmatch(value.strip().lstrip("'’")):
            return  # numbers and decades ("1990s") are compared numerically instead
        self.vocabulary.setdefault(key, value)

    def _add_title(self, title: str) -> None:
        key = normalise(title)
        if key and len(key.split()) <= _MAX_TERM_WORDS:
            self.titles.setdefault(key, title)
        # Without its year a title is matched only in its own capitalisation and when it has two or
        # more words, one of them uncommon: "Home Alone" is a claim, "heat" or "get out" are not.
        short = _cased_tokens(_YEAR_SUFFIX_RE.sub("", title))
        if 2 <= len(short) <= _MAX_TERM_WORDS and short[0][:1].isupper() and any(
            w.lower() not in COMMON_WORDS for w in short
        ):
            self.short_titles.setdefault(" ".join(short), title)

    def claims(self, text: str) -> list[tuple[str, str]]:
        """All checkable claims of a text as (kind, text) pairs.

        kind is number, decade, term, title, name (a capitalised run, or a capitalised word alone inside a
        sentence) or relation (sequel, remake, adaptation, award ...).
        """
        found: list[tuple[str, str]] = []
        for match in _NUMBER_RE.finditer(text):
            if re.search(r"\bout of\s*$", text[: match.start()], re.IGNORECASE):
                continue  # "4.5 out of 5": the scale is not a claim
            if match.group("decade"):
                found.append(("decade", match.group("num") + "s"))
            else:
                found.append(("number", (match.group("cur") or "") + match.group("num")))
        tokens = normalise(text).split()
        for gram in _ngrams(tokens, _MAX_TERM_WORDS):
            if gram in self.titles:
                found.append(("title", self.titles[gram]))
            if gram in self.vocabulary:
                found.append(("term", self.vocabulary[gram]))
        for gram in _ngrams(_cased_tokens(text), _MAX_TERM_WORDS):
            if gram in self.short_titles:
                found.append(("title", gram))
        for match in _NAME_RE.finditer(text):
            found += [("name", name) for name in _name_runs(match.group(0))]
        for match in _LONE_NAME_RE.finditer(text):
            name = _POSSESSIVE_RE.sub("", match.group("name"))
            if name.lower() not in COMMON_WORDS and len(name) > 1:
                found.append(("name", name))
        found += [("relation", match.group(0)) for match in _RELATION_RE.finditer(text)]
        return list(dict.fromkeys(found))

    def unsupported_claims(self, text: str, item: Item, user_text: str = "") -> list[str]:
        """Claims in ``text`` supported neither by ``item``'s record nor by ``user_text`` (deduplicated).

        >>> checker.unsupported_claims("A 2003 film with Tom Hanks", heat)  # doctest: +SKIP
        ['2003', 'Tom Hanks']
        """
        record = record_text(item)
        support = normalise(record) + " \n " + normalise(user_text)
        known_numbers = [*item.numbers.values(), *numbers_in(record), *numbers_in(user_text)]
        stemmed_support = " ".join(stem(w) for w in support.split())
        out: dict[str, str] = {}
        for kind, claim in self.claims(text):
            if kind == "number":
                ok = _number_matches(claim.lstrip("$€£¥"), float(claim.lstrip("$€£¥").replace(",", "")),
                                     known_numbers)
            elif kind == "decade":
                ok = _decade_supported(int(claim[:-1]), known_numbers)
            else:
                ok = _contains(support, normalise(claim))
                if not ok and kind in ("relation", "name"):  # "Oscars" in the record supports "an Oscar"
                    ok = _contains(stemmed_support, " ".join(stem(w) for w in normalise(claim).split()))
            if not ok:
                out.setdefault(normalise(claim) or claim, claim)
        # "Toy Story" inside "Toy Story (1995)" is one claim, not two.
        return [claim for key, claim in out.items()
                if not any(other != key and _contains(other, key) for other in out)]

    def refers_to_user(self, text: str, user_likes: Sequence[str]) -> bool:
        """Whether ``text`` mentions something the user said they like.

        A liked title counts when the title (with or without its year) appears; a liked attribute or
        wish counts when the whole phrase or one of its uncommon words appears (plurals folded).
        """
        words = normalise(text)
        stems = {stem(w) for w in words.split()}
        for like in user_likes:
            key = normalise(like)
            if not key:
                continue
            bare = normalise(_YEAR_SUFFIX_RE.sub("", like))
            if key in self.titles or bare in self.titles or _YEAR_SUFFIX_RE.search(like):
                if _contains(words, key) or _contains(words, bare):
                    return True
                continue
            if _contains(words, key):
                return True
            content = [w for w in key.split() if w not in COMMON_WORDS and w not in _NEGATIONS and len(w) > 2]
            if any(stem(w) in stems for w in content):
                return True
        return False

    def injected(self, text: str, item: Item, user_text: str = "", protected: Sequence[str] = ()) -> list[str]:
        """Why generated ``text`` must not be shown although its facts may check out (empty: it may).

        It carries chat-template tokens, role headers, markup or an instruction; it has a link or an email
        address the item's cleaned record does not; it repeats words that occur only in the injected
        parts of the record or of ``user_text`` (see `scan`); or it quotes five words in a row of one of
        the ``protected`` texts (system prompts).
        """
        reasons = sorted(scan(text)[1])
        folded = fold(text)
        clean_item = sanitise_item(item)
        clean_record = fold(record_text(clean_item))
        urls = [m.group(0).lower() for m in _URL_RE.finditer(folded)]
        if any(url not in clean_record for url in urls):
            reasons.append("link")
        clean_user = sanitise_text(user_text)
        trusted = set(_TOKEN_RE.findall(clean_record + " " + fold(clean_user)))
        untrusted = set(_TOKEN_RE.findall(fold(record_text(item) + " " + user_text))) - trusted - COMMON_WORDS
        if clean_item is item and clean_user == " ".join(user_text.split()):
            untrusted = set()  # nothing was injected: every word of the record and the user is data
        if untrusted & set(_TOKEN_RE.findall(folded)):
            reasons.append("injected words")
        words = _TOKEN_RE.findall(folded)
        shingles = {" ".join(words[i:i + _SHINGLE]) for i in range(len(words) - _SHINGLE + 1)}
        for secret in protected:
            secret_words = _TOKEN_RE.findall(fold(secret))
            if any(" ".join(secret_words[i:i + _SHINGLE]) in shingles
                   for i in range(len(secret_words) - _SHINGLE + 1)):
                reasons.append("prompt")
                break
        return reasons


_NEGATIONS = frozenset({"not", "no", "never", "nothing", "without", "too", "isn", "don", "doesn"})


def _name_runs(span: str) -> list[str]:
    """Split a capitalised run at common words ("Since Tom Hanks And Tim Allen" -> two names)."""
    runs: list[list[str]] = [[]]
    for word in span.split():
        bare = _POSSESSIVE_RE.sub("", word)
        if bare.lower().strip("'’") in COMMON_WORDS:
            runs.append([])
        else:
            runs[-1].append(bare)
    return [" ".join(run) for run in runs if len(run) >= 2]


def _decade_supported(decade: int, known: Iterable[float]) -> bool:
    starts = [decade] if decade >= 100 else [1900 + decade, 2000 + decade]
    return any(start <= number < start + 10 for start in starts for number in known)


# -- prompt injection ------------------------------------------------------------------------------------
# Catalog text and user messages are data. These helpers find the parts of such text that try to act as
# instructions or as chat-template structure (fake turns), so that they never reach the LM's prompt, the
# templated justifications or the dialogue state, and so that generated text repeating them is dropped.

# Look-alike Cyrillic and Greek letters, folded to Latin for detection only (never for output: a catalog
# may legitimately be in Cyrillic or Greek).
_CONFUSABLES = str.maketrans("АВЕНІЈКМОРСТХаеіјорсхуѕԁһӏΑΒΕΗΙΚΜΝΟΡΤΧΥΖαοιν",
                             "ABEHIJKMOPCTXaeijopcxysdhlABEHIKMNOPTXYZaoiv")
# Invisible characters removed from untrusted text: zero-width spaces, word joiners, BOM, bidi overrides
# ("Trojan source"). ZWJ/ZWNJ stay: scripts and emoji need them (detection ignores them anyway).
_INVISIBLE_RE = re.compile("[\u00ad\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_ROLE = r"(?i:system|assistant|developer|model|tool|ipython|user|human)"
_PRIVILEGED = {"system", "assistant", "developer", "model", "tool", "ipython", ""}
# Chat-template structure of the common model families (ChatML, Llama 2/3, Gemma, Zephyr/Phi), JSON chat
# messages, and role headers such as "SYSTEM:" or "### Assistant:" that start a fake turn in plain text.
_STRUCTURE_RE = re.compile(
    rf"(?P<open><\|im_start\|>[ \t]*(?P<r1>{_ROLE})?"
    rf"|<\|start_header_id\|>[ \t]*(?P<r2>{_ROLE})?[ \t]*<\|end_header_id\|>"
    rf"|<start_of_turn>[ \t]*(?P<r3>{_ROLE})?"
    rf"|<\|(?P<r4>{_ROLE})\|>"
    r"|<<SYS>>)"
    r"|(?P<close><\|im_end\|>|<\|eot_id\|>|<end_of_turn>|<\|end\|>|<</SYS>>|</s>|\[/INST\]|<\|endoftext\|>)"
    r"|(?P<neutral><\|[^<>|\n]{1,40}\|>|<s>|\[INST\]|<\|?endoftext\|?>)"
    r"|(?P<json>\{\s*\"role\"\s*:\s*\"(?P<jrole>\w*)\"\s*,\s*\"content\"\s*:\s*\"(?P<jcontent>(?:[^\"\\]|\\.)*)\"\s*\})"
    r"|(?P<header>(?:(?:^|(?<=[.!?\n\"'>\]}]))[ \t]*|#{1,6}[ \t]*)(?i:system|assistant|developer)[ \t]*:"
    r"|\b(?:SYSTEM|ASSISTANT|DEVELOPER)[ \t]*:)"
)
_LINE_END_RE = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)|\n")
_MARKUP_RE = re.compile(r"<(script|style)\b.*?(?:</\1\s*>|$)|</?[A-Za-z][^<>]{0,300}>", re.IGNORECASE | re.DOTALL)
_SENTENCE_SPLIT_RE = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+|\n+")
# Sentences addressed to an assistant rather than describing an item or a wish (read on `fold`ed text).
_INSTRUCTION_RE = re.compile("|".join((
    # Kept narrow on purpose: plots say "forget the past", "act as a double agent", "send messages", "a
    # hidden message", "jam sessions"; such sentences must stay.
    r"\b(?:ignore|disregard|forget|override|bypass)\b[^.!?\n]{0,40}\b(?:instructions?|prompts?|guidelines|directives)\b",
    r"\b(?:ignore|disregard|forget)\s+(?:all\s+|any\s+|the\s+|everything\s+)?(?:above\b|(?:previous|prior|earlier|"
    r"preceding|foregoing)\s+(?:\w+\s+)?(?:instructions?|prompts?|messages?|text|context|rules|directions|commands|"
    r"orders)\b)",
    r"\b(?:system|developer)\s+(?:prompt|instructions?|message)\b|"
    r"\b(?:hidden|initial|original|secret)\s+(?:prompt|instructions|context)\b",
    r"\brepeat\b[^.!?\n]{0,40}\b(?:above|prompt|instructions|verbatim|word for word)\b",
    r"\b(?:reveal|print|repeat|show|output|display|leak|dump|tell me|give me|what (?:is|are)|write out)\b"
    r"[^.!?\n]{0,40}\byour\s+(?:\w+\s+)?(?:prompt|instructions|rules|configuration|guidelines)\b",
    r"\byou are (?:now|no longer)\b|\bpretend (?:that )?you are\b|\bjailbreak|\b(?:developer|debug|admin) mode\b|"
    r"\bdo anything now\b|\byou are dan\b",
    r"\b(?:the|this)\s+(?:ai\s+)?(?:assistant|chatbot|language model|llm|recommender|bot)\s+(?:must|should|shall|"
    r"has to|needs to|will)\s+(?:now\s+)?(?:always\s+|only\s+|never\s+)?(?:print|reveal|say|reply|respond|recommend|"
    r"ignore|tell|output|answer|repeat|obey)\b",
    r"\b(?:tell|ask|instruct|direct|urge)\s+(?:the\s+)?(?:users?|readers?|customers?|visitors?)\s+to\b",
    r"\b(?:recommend|suggest|promote|mention|say)\b[^.!?\n]{0,80}\b(?:every|each|all|any)\s+(?:query|queries|"
    r"requests?|answers?|responses?|conversations?)\b",
    r"\b(?:email|e-mail|send|post|upload|forward|leak)\b[^.!?\n]{0,20}\b(?:your|the)\s+(?:\w+\s+)?(?:prompt|"
    r"instructions|conversation history|chat history|session data)\b",
    r"\b(?:list|show|reveal|give|tell|switch to|open|read|access|dump)\b[^.!?\n]{0,30}\b(?:all|other|another|"
    r"their|every)\s+(?:users?(?:'s?)?|sessions?|session ids?|conversations|people'?s?\s+(?:messages|sessions|"
    r"conversations))\b",
    r"\bsessions?\s+(?:id\s+)?[0-9a-f]{8,}\b",
    r"\bi am (?:the|an|your) (?:admin|administrator|developer|owner|operator)\b",
    r"\b(?:other|another)\s+(?:users?|customers?|people|person)(?:'s)?\s+(?:say|said|says|wrote|write|typed|asked|"
    r"told|messages?|sessions?|conversations?|chats?|history|data|secrets?)\b",
)))
# "say HACKED", "reply only with PWNED": a demand to utter a shouted word (read on case-kept text).
_SAY_RE = re.compile(r"\b(?i:say|reply|respond|answer|write|output|print|type)\b\s+(?i:only\s+)?(?i:with\s+)?"
                     r"(?i:the\s+word\s+)?[\"'“]?[A-Z]{4,}\b")
_URL_RE = re.compile(r"\b(?:https?|ftp)://|\bwww\.|[\w.+-]+@[\w-]+(?:\.[\w-]+)+|"
                     r"\b[\w-]+\.(?:com|net|org|io|example|ru|xyz|info|biz|ly|me|co)\b", re.IGNORECASE)
_SHINGLE = 5


def fold(text: str) -> str:
    """Detection form of untrusted text: compatibility forms, invisible characters and look-alikes folded.

    ``"Ｉg\u200bnore prеvious"`` (full-width, zero-width space, Cyrillic е) -> ``"ignore previous"``.
    """
    text = unicodedata.normalize("NFKC", text)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return text.translate(_CONFUSABLES).lower()


def is_instruction(sentence: str) -> bool:
    """Whether a sentence gives orders to the assistant ("ignore previous instructions", "say PWNED")."""
    if _INSTRUCTION_RE.search(fold(sentence)):
        return True
    upper = "".join(c for c in unicodedata.normalize("NFKC", sentence) if unicodedata.category(c) != "Cf")
    return bool(_SAY_RE.search(upper.translate(_CONFUSABLES)))


def _structure(text: str, findings: set[str]) -> list[str]:
    """The data chunks of ``text``: chat-template tokens removed, fake system/assistant turns dropped."""
    chunks: list[str] = []
    pos = 0
    skip_until_close = False
    while pos <= len(text):
        match = _STRUCTURE_RE.search(text, pos)
        end = match.start() if match else len(text)
        if not skip_until_close:
            chunks.append(text[pos:end])
        if match is None:
            break
        pos = max(match.end(), pos + 1) if match.end() == match.start() else match.end()
        if match.group("open") is not None:
            findings.add("token")
            role = (match.group("r1") or match.group("r2") or match.group("r3") or match.group("r4") or "").lower()
            # A user turn is what a user would say anyway; any other turn is a forged instruction.
            skip_until_close = role in _PRIVILEGED
        elif match.group("close") is not None:
            findings.add("token")
            skip_until_close = False
        elif match.group("neutral") is not None:
            findings.add("token")
        elif match.group("json") is not None:
            findings.add("role")
            if match.group("jrole").lower() in ("user", "human") and not skip_until_close:
                chunks.append(match.group("jcontent"))
        elif match.group("header") is not None:
            findings.add("role")
            if not skip_until_close:
                # A role header's turn lasts to the end of its sentence or line.
                stop = _LINE_END_RE.search(text, pos)
                pos = stop.end() if stop else len(text)
    return chunks


def scan(text: str) -> tuple[str, set[str]]:
    """Untrusted text reduced to its data, and what was found in it.

    Chat-template tokens and markup are removed, forged system/assistant turns (`<|im_start|>system ...`,
    `SYSTEM: ...`, `{"role": "system", ...}`) and sentences that give orders to the assistant are dropped.
    Findings: ``token``, ``role``, ``markup``, ``instruction``. Text without any comes back unchanged
    (whitespace collapsed).
    """
    findings: set[str] = set()
    kept: list[str] = []
    dropped: list[str] = []
    # Chat structure first: "</s>" and "<<SYS>>" would otherwise be taken for markup.
    for chunk in _structure(_INVISIBLE_RE.sub("", text), findings):
        if _MARKUP_RE.search(chunk):
            findings.add("markup")
            chunk = _MARKUP_RE.sub(" ", chunk)
        for sentence in _SENTENCE_SPLIT_RE.split(chunk):
            sentence = " ".join(sentence.split())
            if not sentence:
                continue
            if is_instruction(sentence):
                findings.add("instruction")
                dropped.append(fold(sentence))
                continue
            kept.append(sentence)
    if not findings:
        return " ".join(text.split()), findings
    # A repeated injection cut by the length limit leaves its start behind ("... Ignore all"): drop it too.
    kept = [k for k in kept if not (len(k.split()) >= 2 and any(d.startswith(fold(k)) for d in dropped))]
    return " ".join(kept), findings


def sanitise_text(text: str) -> str:
    """The data part of untrusted text (see `scan`)."""
    return scan(text)[0] if text else text


def unsafe_value(value: str) -> bool:
    """Whether a short value (a title, a list value, a like) carries an instruction or chat structure."""
    return bool(scan(value)[1] & {"token", "role", "instruction"})


def unsafe_title(title: str) -> bool:
    """Whether a title is an instruction or carries chat-template structure: such an item is never shown."""
    return bool(scan(title)[1] & {"token", "role", "instruction"})


def sanitise_item(item: Item) -> Item:
    """A copy of ``item`` whose text and list values hold only data (see `scan`); numbers unchanged.

    Values that were nothing but an injection are dropped; so is the injected part of a title.
    """
    text: dict[str, str] = {}
    for name, value in item.text.items():
        clean, findings = scan(value)
        if clean:
            text[name] = clean if findings else value
    lists: dict[str, list[str]] = {}
    for name, values in item.lists.items():
        kept = []
        for value in values:
            clean, findings = scan(value)
            if clean and not unsafe_value(value):
                kept.append(clean if findings else value)
        if kept:
            lists[name] = kept
    title = item.title
    if unsafe_title(title):
        # Such an item is never recommended; here it is only named, without its forged turn or order.
        title = scan(title)[0] or "this item"
    if text == item.text and lists == item.lists and title == item.title:
        return item
    return item.model_copy(update={"title": title, "text": text, "lists": lists})
