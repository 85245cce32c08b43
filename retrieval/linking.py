"""Entity linking: find catalog items and attribute values named in free text.

Precision matters more than recall here: a wrong link poisons the whole conversation (the recommender
treats it as something the user liked), while a missed link only costs one signal. So titles that are
ordinary words ("Heat", "Up", "It") need evidence in the text before they are linked, and fuzzy matching
is limited to multi-word spans with a high threshold.

Nothing here assumes movies: titles, years and attribute fields are whatever the catalog holds.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import islice

from rapidfuzz import fuzz, process
from rapidfuzz.distance import OSA

from retrieval.catalog import Catalog

__all__ = ["AttributeMention", "EntityLinker", "ItemMention", "normalize_title", "title_year"]

# Words with internal apostrophes stay one token ("schindler's" -> "schindlers"); "&" is a token ("and").
_TOKEN_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|&")
# Lowercase words as themselves, any other token (capitalised, with digits or apostrophes) as "".
_LOWER_OR_BREAK_RE = re.compile(r"([a-z]+)(?![\w'’])|[^\W_]+(?:['’][^\W_]+)*")
_YEAR = r"1[89]\d\d|20\d\d"
_TRAILING_YEAR_RE = re.compile(rf"\s*[(\[]\s*({_YEAR})\s*[)\]]\s*$")
_YEAR_AFTER_RE = re.compile(rf"\s*(?:[(\[]\s*(?P<y1>{_YEAR})\s*[)\]]|,?\s*(?P<y2>{_YEAR})(?![\w]))")
_ARTICLE_SUFFIX_RE = re.compile(r"^(?P<body>.+?),\s*(?P<article>the|a|an)$", re.IGNORECASE)
_PARENTHETICAL_RE = re.compile(r"\s*\([^)]*\)")
# Catalog identifiers ("tt0109127", "B00X4WHP") are not attributes anyone says in a chat.
_ID_LIKE_RE = re.compile(r"^[a-z]*\d[a-z\d]*$")

_ARTICLES = frozenset({"the", "a", "an"})
_ROMAN = frozenset({"ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x", "xi", "xii"})
_QUOTES = frozenset("\"'“”‘’«»*_`")
_SENTENCE_END = frozenset(".!?:;\n")

# Function words and generic chat words. Titles made only of these ("It", "Up", "This Is It") need strong
# evidence (capitalised mid-sentence, quoted, or followed by their year); they are never attribute values.
_STOPWORDS = frozenset("""
a an the and or but nor so yet if then than because as of at by for with about against between into
through during before after above below to from up down in out on off over under again further once here
there when where why how all any both each few more most other some such no not only own same too very can
will just should now i me my myself we us our ours ourselves you your yours yourself yourselves he him his
himself she her hers herself it its itself they them their theirs themselves what which who whom whose this
that these those am is are was were be been being have has had having do does did doing would could might
must shall may im ive id ill youre youve dont doesnt didnt cant wont isnt arent wasnt havent thats whats
lets yes yeah yep nope ok okay oh hi hello hey thanks thank please sure maybe well really also still even
ever never always something anything nothing everything someone anyone everyone one ones thing things get
got go going gone see seen saw watch watched like liked likes love loved want wanted need know think say
said make made good great nice bad best better movie movies film films show shows lot lots much many kind
sort type bye goodbye else us let lol haha wow cool fine others every another stuff
""".split())

# Ordinary words that are also titles ("Taken", "Crash", "Home Alone"). A title made only of these (and
# stopwords) links only with evidence: a cue word before it, capitalisation, quotes or its year.
_COMMON_WORDS = frozenset("""
heat home life time man men woman women girl girls boy boys kid kids friend friends family money night day
days war house game games room fast rush crash click taken split brave frozen cars car signs sign seven big
old new next last first enough sorry wild enemy giant contact contract criminal identity resolution holiday
holidays christmas summer winter spring fall school city world town country water fire ice rain snow storm
sun moon star stars light dark black white red blue green gold dead alive hate fear hope dream dreams story
stories secret secrets truth lies rules change chance choice deal plan job work boss party wedding date
dinner lunch breakfast food music dance song songs play fun funny scary happy sad angry real true free
perfect pretty beautiful ugly strange weird crazy mad sweet hot cold warm young little small short long high
low hard soft easy simple wrong right left back away together alone lost found chosen hidden broken missing
stuck trapped run running walk drive ride fly fight kill killers escape chase hunt search help trust believe
remember forget stay leave come came speed power force nature space earth heaven hell god angel angels devil
monster monsters ghost ghosts zombie zombies alien aliens hero heroes king queen prince princess doctor
teacher student soldier police cop cops lawyer judge father mother dad mom son daughter brother brothers
sister sisters baby babies wife husband parents neighbors strangers people person everybody nobody today
tonight tomorrow yesterday week weekend month year years hour hours minute moment forever soon later early
late twice two three four five six eight nine ten eleven twelve hundred thousand million top bottom end
beginning middle inside outside side edge line point place road street way trip journey vacation travel
island beach ocean sea river lake mountain forest jungle desert field garden park zoo farm hotel bar club
office hospital prison jail church bank store shop market airport train plane ship boat bus taxi truck bike
phone computer internet tv radio news book books paper letter letters picture pictures photo camera video
ball gun guns knife sword bomb shot hit kiss touch feel feeling mind heart soul body blood bones face eyes
hands head skin hair voice words name names number numbers character characters actor actors director cast
plot ending scene scenes trailer series sequel episode season classic classics action comedy drama horror
thriller romance mystery fantasy adventure animation documentary western musical crime history biography
sport sports superhero suspense genre genres recommendation recommendations suggestion suggestions idea
question answer problem trouble mess disaster accident attack invasion revenge justice vengeance mission
target proof evidence witness suspect victim survivor survivors legend legends magic wonder miracle luck
fate destiny glory honor pride shame guilt sin punishment obsession desire passion affair marriage divorce
birth death lives living dying born older bigger smaller faster stronger stranger mean horrible bad rock
checking check american conversation score seeker trip fan cause non
""".split())

# Capitalisation is no evidence for words that are always capitalised in English, or that people
# capitalise as interjections ("Oh Yes").
_ALWAYS_CAPITALISED = frozenset("""
i january february march april may june july august september october november december monday tuesday
wednesday thursday friday saturday sunday yes no ok okay oh hi hello hey thanks yeah wow
""".split())
# "It is", "Her name was": a stopword title followed by one of these is the pronoun.
_PRONOUN_FOLLOWERS = frozenset("""
is was has had does did will would can could should might must s isnt wasnt doesnt didnt makes made sounds
looks seems seemed gets got goes went comes came takes took feels felt just really also
""".split())
_CUE_NOUNS = frozenset({"movie", "film", "show", "book"})
_SUBJECTS = frozenset({"i", "you", "we", "they", "he", "she"})
_COMPOUND_JOINERS = frozenset({"-", "/", "–", "‐"})
# "about" names a title in "what about Heat", not in "a movie about demons".
_ABOUT_LEADS = frozenset({"what", "how", "think", "thoughts", "heard", "forgot"})

# Words that may follow a title named after a cue ("I saw heat twice"); any other word suggests the
# title word is modifying a noun ("I like fast cars").
_AFTER_CUE_OK = (_STOPWORDS - frozenset("""
movie movies film films show shows thing things one ones kind sort type lot lots good great nice
bad best better
""".split())) | frozenset("""
twice thrice yesterday today tonight recently already lately ago last earlier again too either
""".split())

# A title right after one of these is being named as a title ("I loved heat", "have you seen up").
_CUE_WORDS = frozenset("""
watched watch watching rewatched rewatch rewatching seen see saw seeing like liked likes love loved loves
enjoyed enjoy enjoys adored adore hated hate disliked dislike about called titled named recommend recommended
recommending suggest suggested try tried movie film show book read reading than
""".split())

# How much evidence a title needs before it links. A following matching year or quotes always suffice,
# and (below _NEEDS_QUOTE) so does a title-cased span after a cue word; otherwise _EVIDENCE says whether
# capitalisation alone (caps) or a cue word / list continuation alone (cue) is enough.
_FREE = 0  # distinctive multi-word titles: no evidence needed
_NEEDS_CASE = 1  # distinctive single words ("Inception"): caps (even sentence-initial) or a cue
_NEEDS_CUE = 2  # common words, short words, numbers ("Heat", "Taken", "2012"): caps or a cue
_NEEDS_NAME = 3  # equal to a person's name ("Jackie Chan", "Patch Adams"): a cue
_NEEDS_STRONG = 4  # only stopwords ("It", "Up", "Her"): caps mid-sentence
_NEEDS_QUOTE = 5  # a genre/category word ("I like Comedy and Action"): quotes or year only
_EVIDENCE: dict[int, tuple[bool, bool]] = {
    _NEEDS_CASE: (True, True),
    _NEEDS_CUE: (True, True),
    _NEEDS_NAME: (False, True),
    _NEEDS_STRONG: (True, False),
    _NEEDS_QUOTE: (False, False),
}
_LIST_JOINERS = frozenset({"and", "or", "nor"})
_MAX_NGRAM = 12
_FUZZY_TITLE_CUTOFF = 90.0
_FUZZY_ATTR_CUTOFF = 92.0
_RESOLVE_CUTOFF = 92.0
_MAX_ATTR_CHARS = 40
_COMMON_DOC_SAMPLE = 20000
_MIN_TEXT_DOCS = 200  # below this the catalog's text says too little about which phrases are everyday


@dataclass(frozen=True)
class ItemMention:
    """A catalog item named in text: ``text[start:end] == surface``; ``score`` is a confidence in 0..1."""

    item_id: str
    surface: str
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class AttributeMention:
    """An attribute value named in text; ``value`` is spelled as in the catalog."""

    field: str
    value: str
    surface: str
    start: int
    end: int


@dataclass(frozen=True)
class _Token:
    norm: str
    start: int
    end: int
    orig: str


@dataclass(frozen=True)
class _AttrEntry:
    field: str
    value: str
    # One-word values from person-name fields ("Common") match only when capitalised in the text.
    needs_caps: bool


def _fold(token: str) -> str:
    """Lowercase, strip accents and apostrophes; '&' -> 'and'."""
    if token == "&":
        return "and"
    if not token.isascii():
        token = "".join(c for c in unicodedata.normalize("NFKD", token) if not unicodedata.combining(c))
    return token.lower().replace("'", "").replace("’", "")


def _tokenize(text: str) -> list[_Token]:
    tokens = []
    for match in _TOKEN_RE.finditer(text):
        norm = _fold(match.group())
        if norm:
            tokens.append(_Token(norm, match.start(), match.end(), match.group()))
    return tokens


def _norm_words(text: str) -> list[str]:
    """Normalised words of a string, the same as the ``norm`` of `_tokenize` but faster for ASCII."""
    if not text.isascii():
        return [norm for norm in (_fold(m.group()) for m in _TOKEN_RE.finditer(text)) if norm]
    words = _TOKEN_RE.findall(text.lower())
    if "'" in text or "&" in text:
        words = ["and" if w == "&" else w.replace("'", "") for w in words]
    return words


def title_year(title: str) -> int | None:
    """The year of a title that ends in "(YYYY)", else None."""
    match = _TRAILING_YEAR_RE.search(title)
    return int(match.group(1)) if match else None


def _strip_year(title: str) -> str:
    title = _TRAILING_YEAR_RE.sub("", title).strip()
    # Library-style titles put the article last: "Matrix, The".
    match = _ARTICLE_SUFFIX_RE.match(title)
    if match:
        title = f"{match.group('article')} {match.group('body')}"
    return title


def normalize_title(title: str) -> str:
    """Matching key of a title: lowercase, no trailing "(YYYY)", no punctuation or accents, '&' -> 'and'.

    >>> normalize_title("Harry & Sally: The Return (1999)")
    'harry and sally the return'
    """
    return " ".join(_norm_words(_strip_year(title)))


def _singular_forms(word: str) -> list[str]:
    """Candidate singulars of an English plural ("comedies" -> "comedy"); callers check they exist."""
    if len(word) < 4 or word.endswith("ss") or not word.endswith("s"):
        return []
    forms = []
    if word.endswith("ies"):
        forms.append(word[:-3] + "y")
    if word.endswith("es") and (word[-3] in "sxzh" or word.endswith("oes")):
        forms.append(word[:-2])  # "boxes", "heroes"
    forms.append(word[:-1])
    return [f for f in forms if len(f) >= 3]


def _number_forms(word: str) -> list[str]:
    """The other grammatical number of an English noun: singular candidates of a plural, else plurals."""
    singulars = _singular_forms(word)
    if singulars:
        return singulars
    if len(word) < 4 or word.isdigit() or word in _STOPWORDS:
        return []  # "new" is not "news"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return [word[:-1] + "ies", word + "s"]
    return [word + "s", word + "es"] if word[-1] in "sxzh" else [word + "s"]


def _everyday_phrase(words: list[str]) -> bool:
    """Two or three words that are all stopwords, common words or numbers ("last night", "12 angry men")."""
    return 1 < len(words) <= 3 and all(w in _STOPWORDS or w in _COMMON_WORDS or w.isdigit() for w in words)


def _is_number_like(word: str) -> bool:
    return word.isdigit() or word in _ROMAN


def _tokens_differ_ok(span: list[str], key: list[str]) -> bool:
    """A fuzzy match may only differ by typos in real words: never in numbers ("Toy Story 2" vs "3"),
    roman numerals, short words, stopwords or first letters."""
    for a, b in zip(span, key, strict=True):
        if a == b:
            continue
        if _is_number_like(a) or _is_number_like(b) or a in _STOPWORDS or b in _STOPWORDS:
            return False
        if min(len(a), len(b)) < 4 or a[0] != b[0] or a.rstrip("s") == b.rstrip("s"):
            return False  # "producer" vs "producers" is another word, not a typo
        # One edit, or two in long words when the last letter agrees ("photography" is not "photographer").
        edits = OSA.distance(a, b, score_cutoff=2)
        if edits > 2 or (edits == 2 and (max(len(a), len(b)) < 8 or a[-1] != b[-1])):
            return False
    return True


# (end token, mention or None for a blocked span, end offset)
_Hit = tuple[int, "ItemMention | None", int]


class _Text:
    """A message prepared for matching, with the casing and punctuation needed for evidence checks."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.norms = [t.norm for t in self.tokens]
        # In an all-caps (or caseless) message capitalisation says nothing.
        self.has_lower = any(c.islower() for c in text)

    def gap(self, left: int, right: int) -> str:
        """Characters between token ``left`` and token ``right`` (exclusive)."""
        return self.text[self.tokens[left].end:self.tokens[right].start]

    def sentence_initial(self, pos: int) -> bool:
        before = self.text[:pos].rstrip(" \t\"'“‘([*_`")
        return not before or before[-1] in _SENTENCE_END


class EntityLinker:
    """Finds catalog items and attribute values named in free text. Precision over recall.

    All indexes are built once here; linking a chat message is dictionary lookups plus a few pruned
    rapidfuzz comparisons.
    """

    def __init__(self, catalog: Catalog, popularity: Mapping[str, float] | None = None) -> None:
        self._catalog = catalog
        self._ids: list[str] = [item.id for item in catalog]
        popularity = popularity or {}
        self._popularity: list[float] = [float(popularity.get(i, 0.0)) for i in self._ids]
        self._years: list[int | None] = []
        for item in catalog:
            year = item.numbers.get("year")
            self._years.append(int(year) if year is not None else title_year(item.title))
        self._build_attributes()
        self._build_titles()

    # ------------------------------------------------------------------ index building

    def _build_attributes(self) -> None:
        # field -> raw value -> number of items; normalising distinct values only keeps this fast.
        occurrences = Counter((name, value, value == item.title) for item in self._catalog
                              for name, value in item.attribute_values() if 0 < len(value) <= _MAX_ATTR_CHARS)
        raw: dict[str, Counter[str]] = {}
        title_copies: Counter[str] = Counter()
        for (name, value, is_title), n in occurrences.items():
            counts = raw.get(name)
            if counts is None:
                counts = raw[name] = Counter()
            counts[value] += n
            if is_title:
                title_copies[name] += n

        self._attr: dict[str, list[_AttrEntry]] = {}
        self._attr_compact: dict[str, str] = {}
        # People's names: a title equal to one probably means the person; a title equal to a first or
        # last name ("Keanu", "Hitchcock") may.
        self._name_values: set[str] = set()
        self._name_tokens: set[str] = set()
        self._name_fields: set[str] = set()
        norm_cache: dict[str, str] = {}
        generic_items: Counter[str] = Counter()
        for name, counts in raw.items():
            rows = sum(counts.values())
            if title_copies[name] * 2 >= rows:
                continue  # a second copy of the title ("movielens_title"), not an attribute
            if rows >= 50 and len(counts) / rows > 0.95:
                continue  # one value per item: an identifier, not something people ask for
            keyed: dict[str, tuple[str, int]] = {}
            for value, n in counts.items():
                key = norm_cache.get(value)
                if key is None:
                    key = norm_cache[value] = normalize_title(value) if "(" in value else " ".join(
                        _norm_words(value))
                if not key:
                    continue
                if key in keyed:
                    keyed[key] = (keyed[key][0], keyed[key][1] + n)
                else:
                    keyed[key] = (value, n)
            if not keyed:
                continue
            # Person-name fields: mostly capitalised two-to-four-word values ("Tom Hanks") that rarely
            # repeat; Title-Case categories ("Cell Phones") repeat across many items.
            sample = list(islice(keyed.items(), 500))
            names_field = (len(keyed) >= 0.3 * rows
                           and sum(1 for key, _ in sample if 2 <= key.count(" ") + 1 <= 4) >= 0.6 * len(sample)
                           and sum(1 for _, (value, _) in sample if value[:1].isupper()) >= 0.7 * len(sample))
            # A controlled vocabulary (genres, categories) rather than free tags or names.
            vocabulary = not names_field and len(keyed) <= max(50, 0.2 * rows)
            if names_field:
                self._name_fields.add(name)
            for key, (value, n) in keyed.items():
                words = key.split()
                if len(words) == 1:
                    word = words[0]
                    if len(word) < 3 or word in _STOPWORDS or _ID_LIKE_RE.match(word):
                        continue
                # A one-word name ("Common", "Madonna") only when written like a name.
                needs_caps = names_field and len(words) == 1
                if names_field and len(words) > 1:
                    self._name_values.add(key)
                    self._name_tokens.update(words)
                self._attr.setdefault(key, []).append(_AttrEntry(name, value, needs_caps))
                if vocabulary:
                    generic_items[key] += n
        self._generic_values = {key for key, n in generic_items.items() if n >= 2}
        self._name_tokens = {w for w in self._name_tokens if len(w) >= 3 and w not in _STOPWORDS}
        self._attr_max_n = min(_MAX_NGRAM, max((k.count(" ") + 1 for k in self._attr), default=1))
        fuzzy_keys = [k for k in self._attr if " " in k and len(k) >= 6]
        for key in fuzzy_keys:
            compact = key.replace(" ", "")
            if len(compact) >= 5 and compact not in self._attr:
                self._attr_compact.setdefault(compact, key)
        self._attr_fuzzy_keys, self._attr_prefix = self._prefix_index(fuzzy_keys)

    def _build_titles(self) -> None:
        primary: dict[str, list[int]] = {}
        secondary: dict[str, list[int]] = {}
        colon_alias: dict[str, list[int]] = {}
        for index, item in enumerate(self._catalog):
            base = _strip_year(item.title)
            key = " ".join(_norm_words(base))
            if not key:
                continue
            primary.setdefault(key, []).append(index)
            variants = set()
            words = key.split()
            if len(words) > 1 and words[0] in _ARTICLES:
                variants.add(" ".join(words[1:]))
            if "(" in base:
                variants.add(" ".join(_norm_words(_PARENTHETICAL_RE.sub(" ", base))))
            for variant in variants:
                if variant and variant != key:
                    secondary.setdefault(variant, []).append(index)
            if ":" in base:
                head = " ".join(_norm_words(base.split(":", 1)[0]))
                if head.count(" ") >= 1:
                    colon_alias.setdefault(head, []).append(index)
        for head, indices in colon_alias.items():
            # "Star Wars" would name many items; only an unambiguous head is a safe alias.
            if len(indices) == 1 and head not in primary:
                secondary.setdefault(head, []).extend(indices)

        self._primary = primary
        self._secondary = {k: v for k, v in secondary.items() if k not in primary or
                           any(i not in primary[k] for i in v)}
        # Sorted so that ties (shared compact forms, equal fuzzy scores) break the same way every run.
        all_keys = sorted(set(primary) | set(self._secondary))
        self._first_words = {k.split(" ", 1)[0] for k in all_keys}
        self._max_n = min(_MAX_NGRAM, max((k.count(" ") + 1 for k in all_keys), default=1))
        self._compact: dict[str, str] = {}
        for key in all_keys:
            compact = key.replace(" ", "")
            if " " in key and len(compact) >= 6 and compact not in primary and compact not in self._secondary:
                self._compact.setdefault(compact, key)

        single = {k for k in all_keys if " " not in k}
        phrases = {k for k in all_keys if " " in k and _everyday_phrase(k.split())}
        catalog_words, catalog_phrases = self._catalog_usage(single, phrases)
        self._tier = {key: self._title_tier(key, key not in primary, catalog_words, catalog_phrases)
                      for key in all_keys}

        fuzzy_keys = [k for k in all_keys if " " in k and len(k) >= 8 and self._tier[k] == _FREE]
        self._title_fuzzy_keys, self._title_prefix = self._prefix_index(fuzzy_keys)
        self._keys_by_year: dict[int, list[str]] = {}
        for key in all_keys:
            for index in self._candidates(key):
                year = self._years[index]
                if year is not None:
                    bucket = self._keys_by_year.setdefault(year, [])
                    if not bucket or bucket[-1] != key:
                        bucket.append(key)
        self._all_keys = all_keys

    def _catalog_usage(self, words: set[str], phrases: set[str]) -> tuple[set[str], set[str] | None]:
        """Which single-word titles and everyday-word phrases the catalog's own text uses in lowercase.

        "identity" or "the others" appear lowercase in plots and descriptions, "Deadpool" or "fight club"
        do not; this adapts the evidence rules to any domain without a dictionary. The phrase set is None
        when the catalog has too little text to tell.
        """
        items = self._catalog.items
        step = max(1, len(items) // _COMMON_DOC_SAMPLE)
        bigrams = {tuple(p.split()) for p in phrases if p.count(" ") == 1}
        trigrams = {tuple(p.split()) for p in phrases if p.count(" ") == 2}
        used_words: set[str] = set()
        used_phrases: set[tuple[str, ...]] = set()
        docs_with_text = 0
        for item in items[::step]:
            parts = [v for v in item.text.values() if v != item.title]
            for name, values in item.lists.items():
                if name not in self._name_fields:  # capitalised names say nothing about lowercase use
                    parts.extend(values)
            if not parts:
                continue
            docs_with_text += 1
            # Capitalised words (and the separator between values) become "" so that they break phrases.
            lower = _LOWER_OR_BREAK_RE.findall(" X ".join(parts))
            used_words.update(words.intersection(lower))
            if bigrams:
                used_phrases.update(bigrams.intersection(zip(lower, lower[1:], strict=False)))
            if trigrams:
                used_phrases.update(trigrams.intersection(zip(lower, lower[1:], lower[2:], strict=False)))
        if docs_with_text < _MIN_TEXT_DOCS:
            return used_words, None
        return used_words, {" ".join(p) for p in used_phrases}

    def _title_tier(self, key: str, variant_only: bool, catalog_common: set[str],
                    catalog_phrases: set[str] | None) -> int:
        words = key.split()
        if len(key.replace(" ", "")) <= 1 or all(w in _STOPWORDS for w in words):
            return _NEEDS_STRONG
        if key in self._generic_values and len(words) == 1:  # a genre word, e.g. a film called "Horror"
            return _NEEDS_QUOTE
        if key in self._name_values:
            return _NEEDS_NAME
        if len(words) == 1:
            word = words[0]
            common = (len(word) <= 4 or word.isdigit() or word in _COMMON_WORDS or word in catalog_common)
            if variant_only and common:
                return _NEEDS_STRONG  # "kid" for "The Kid": an everyday word that is not even the title
            # "island" for "The Island" is an article-dropped variant: a plain word in most sentences.
            if (common or variant_only or word in _ALWAYS_CAPITALISED or word in self._name_tokens
                    or word in self._generic_values):
                return _NEEDS_CUE
            # Without a dictionary, "choke" or "popcorn" cannot be told from "Zootopia": a lowercase
            # single word needs a cue even when it looks distinctive.
            return _NEEDS_CASE
        if _everyday_phrase(words):
            function_word = any(w in _STOPWORDS for w in words)
            if catalog_phrases is not None and key not in catalog_phrases:
                # Everyday words, but not a phrase the catalog's text uses ("fight club", "gone girl"): still
                # chat may ("date night", "old school"), so lowercase needs a cue.
                return _NEEDS_CUE if function_word else _NEEDS_CASE
            # An everyday phrase; with a function word in it ("the others", "something new") it is part of
            # ordinary sentences so often that a cue word alone is not enough.
            return _NEEDS_STRONG if function_word else _NEEDS_CUE
        if key in self._generic_values:
            return _NEEDS_CUE
        return _FREE

    @staticmethod
    def _prefix_index(keys: list[str]) -> tuple[list[str], dict[str, list[tuple[int, int, int]]]]:
        """Fuzzy candidates by the first 3 letters of each content word: (key index, word position, width).

        A one-typo span keeps the prefix of its other words (and usually of the mistyped one), and the
        position lets the matcher align the candidate span without trying every span length.
        """
        prefix: dict[str, list[tuple[int, int, int]]] = {}
        for k_index, key in enumerate(keys):
            words = key.split()
            seen: set[str] = set()
            for pos, word in enumerate(words):
                if len(word) < 3 or word in _STOPWORDS or word[:3] in seen:
                    continue
                seen.add(word[:3])
                prefix.setdefault(word[:3], []).append((k_index, pos, len(words)))
        return keys, prefix

    # ------------------------------------------------------------------ items

    def _candidates(self, key: str) -> list[int]:
        return self._primary.get(key, []) + self._secondary.get(key, [])

    def _choose(self, indices: list[int], key: str) -> int:
        """Most popular item, then catalog order; items whose primary title is the key come first."""
        primary = self._primary.get(key)
        pool = [i for i in indices if primary and i in primary] or indices
        return max(pool, key=lambda i: (self._popularity[i], -i))

    def _year_after(self, msg: _Text, end_token: int) -> tuple[int, int] | None:
        """(year, end offset) when "YYYY" or "(YYYY)" follows the token."""
        pos = msg.tokens[end_token - 1].end
        match = _YEAR_AFTER_RE.match(msg.text, pos)
        if not match:
            return None
        return int(match.group("y1") or match.group("y2")), match.end()

    @staticmethod
    def _title_cased(msg: _Text, s: int, e: int) -> bool:
        """Every content word of the span starts with a capital ("Lord of the Rings", "the Matrix"), and at
        least one is capitalised rather than shouted in all caps."""
        if not msg.has_lower:
            return False
        cased = False
        for k in range(s, e):
            orig = msg.tokens[k].orig
            if orig[0].isupper():
                cased = cased or len(orig) == 1 or not orig.isupper()
            elif not orig[0].isdigit() and not (msg.norms[k] in _STOPWORDS and (
                    k > s or msg.norms[k] in _ARTICLES)):
                return False
        return cased

    def _capitalised(self, msg: _Text, s: int, e: int, allow_initial: bool = False) -> bool:
        """Capitalisation is evidence of a title: title-cased, not only because it starts a sentence (unless
        ``allow_initial``), not a word that is always capitalised ("May", "I"), and not part of a longer
        capitalised name ("Stephen King", "Bruce Willis Fan")."""
        if not self._title_cased(msg, s, e):
            return False
        tokens = msg.tokens
        initial = msg.sentence_initial(tokens[s].start)
        counted = False
        for k in range(s, e):
            orig = tokens[k].orig
            if (orig[0].isupper() and not orig.isupper() and len(orig) > 1
                    and msg.norms[k] not in _ALWAYS_CAPITALISED and (k > s or allow_initial or not initial)):
                counted = True
        if not counted:
            return False
        before = s - 1
        if (before >= 0 and not msg.gap(before, s).strip() and self._cased_word(msg, before)
                and not msg.sentence_initial(tokens[before].start)):
            return False
        return not (e < len(tokens) and not msg.gap(e - 1, e).strip() and self._cased_word(msg, e))

    @staticmethod
    def _cased_word(msg: _Text, k: int) -> bool:
        return msg.tokens[k].orig[0].isupper() and msg.norms[k] not in _ALWAYS_CAPITALISED

    @staticmethod
    def _in_compound(msg: _Text, s: int, e: int) -> bool:
        """The span is glued to a neighbouring word: "Ex-Cop", "Wreck-It", "action/comedy"."""
        return (s > 0 and msg.gap(s - 1, s) in _COMPOUND_JOINERS
                or e < len(msg.tokens) and msg.gap(e - 1, e) in _COMPOUND_JOINERS)

    def _quoted(self, msg: _Text, start: int, end: int) -> bool:
        text = msg.text
        return start > 0 and end < len(text) and text[start - 1] in _QUOTES and text[end] in _QUOTES

    def _cue(self, msg: _Text, s: int, e: int) -> bool:
        """A cue word right before the span, and the span is not modifying a following noun
        ("I like fast cars" is not about the film "Fast")."""
        if s == 0 or msg.norms[s - 1] not in _CUE_WORDS or msg.gap(s - 1, s).strip():
            return False
        if msg.norms[s - 1] == "about" and (s < 2 or msg.norms[s - 2] not in _ABOUT_LEADS):
            return False
        if msg.norms[s - 1] in _CUE_NOUNS and (s < 2 or msg.norms[s - 2] != "the"):
            return False  # "the movie Heat", not "a great movie last night"
        if e >= len(msg.tokens):
            return True
        return bool(msg.gap(e - 1, e).strip()) or msg.norms[e] in _AFTER_CUE_OK

    def _sequel_follows(self, msg: _Text, e: int) -> bool:
        """ "toy story 4" must not link "Toy Story" when part 4 is not in the catalog."""
        if e >= len(msg.tokens) or msg.gap(e - 1, e).strip():
            return False
        word = msg.norms[e]
        return word in _ROMAN or word == "part" or (word.isdigit() and len(word) <= 2)

    def _listed_after(self, msg: _Text, s: int, last_tokens: set[int]) -> bool:
        """Token ``s`` continues a list whose previous member was linked: "I liked Heat, avatar and up"."""
        if s == 0:
            return False
        p = s - 1
        if msg.norms[p] in _LIST_JOINERS and not msg.gap(p, s).strip():
            if p == 0:
                return False
            gap = msg.gap(p - 1, p).strip()
            p -= 1
        else:
            gap = msg.gap(p, s).strip()
        return gap in ("", ",") and p in last_tokens and (gap == "," or msg.norms[s - 1] in _LIST_JOINERS)

    def _mention(self, msg: _Text, s: int, e: int, key: str, indices: list[int], base: float,
                 tier: int, listed: bool = False) -> tuple[ItemMention, int] | None:
        """Apply year disambiguation and the evidence rules; (mention, end offset) or None."""
        start, end = msg.tokens[s].start, msg.tokens[e - 1].end
        if self._in_compound(msg, s, e):
            return None
        year_match = False
        year_after = self._year_after(msg, e)
        if year_after is not None:
            with_year = [i for i in indices if self._years[i] == year_after[0]]
            if with_year:
                indices, end, year_match = with_year, year_after[1], True
        if tier != _FREE and not year_match and not self._quoted(msg, start, end):
            caps_ok, cue_ok = _EVIDENCE[tier]
            if tier == _NEEDS_STRONG and e < len(msg.tokens) and msg.norms[e] in _PRONOUN_FOLLOWERS:
                caps_ok = False  # "..., It makes me cry"
            if s > 0 and msg.norms[s - 1] in _SUBJECTS and tier >= _NEEDS_CUE:
                caps_ok = False  # a verb: "I Loved it", "I Hope so"
            cue = self._cue(msg, s, e)
            accepted = (cue and tier < _NEEDS_QUOTE and self._title_cased(msg, s, e)
                        or caps_ok and self._capitalised(msg, s, e, allow_initial=tier == _NEEDS_CASE)
                        or cue_ok and (cue or listed))
            if not accepted:
                return None
        chosen = self._choose(indices, key)
        score = base
        if tier != _FREE and not year_match:
            score *= 0.85
        if len(indices) > 1:
            score *= 0.95
        return ItemMention(self._ids[chosen], msg.text[start:end], start, end, round(score, 4)), end

    def _exact_at(self, msg: _Text, s: int, listed: bool = False) -> _Hit | None:
        """Longest accepted exact match starting at token ``s``: (end token, mention, end offset).

        The mention is None for a blocked span: a title followed by a sequel number that is not in the
        catalog ("toy story 4"), whose words must not link to anything else either."""
        norms = msg.norms
        top = min(self._max_n, len(norms) - s)
        spaced = norms[s] in self._first_words
        for n in range(top, 0, -1):
            e = s + n
            found: tuple[str, float] | None = None
            if spaced:
                key = " ".join(norms[s:e])
                if key in self._primary:
                    found = key, 1.0
                elif key in self._secondary:
                    found = key, 0.95
            if found is None and n <= 4:
                target = self._compact.get("".join(norms[s:e]))
                if target is not None:
                    found = target, 0.93
            if found is None:
                continue
            key, base = found
            if self._sequel_follows(msg, e):
                return e, None, msg.tokens[e - 1].end
            result = self._mention(msg, s, e, key, self._candidates(key), base, self._tier[key], listed)
            if result is not None:
                return e, result[0], result[1]
        return None

    def link_items(self, text: str) -> list[ItemMention]:
        """Catalog items named in ``text``: non-overlapping, in text order.

        Exact normalised n-grams first (longest wins), then fuzzy matching (rapidfuzz ratio >= 90) on
        the remaining multi-word spans. Titles that are ordinary words link only with evidence.
        """
        msg = _Text(text)
        if not msg.tokens:
            return []
        found: list[tuple[int, int, ItemMention | None, int]] = []
        for s in range(len(msg.tokens)):
            hit = self._exact_at(msg, s)
            if hit is not None:
                found.append((s, hit[0], hit[1], hit[2]))
        taken = [False] * len(msg.tokens)
        chosen: list[ItemMention] = []
        # Longest first; among equally long overlapping spans the more confident one.
        found.sort(key=lambda f: (-(f[1] - f[0]), -(f[2].score if f[2] else 0.0), f[0]))
        last_tokens: set[int] = set()
        for s, e, mention, end in found:
            if not self._inside_longer_value(msg, s, e):
                last = self._claim(msg, taken, s, e, end)
                if last >= 0 and mention is not None:
                    chosen.append(mention)
                    last_tokens.add(last)
        # Members of a list after a linked title count as named titles ("Heat, avatar and up").
        grew = True
        while grew:
            grew = False
            for s in range(len(msg.tokens)):
                if taken[s] or not self._listed_after(msg, s, last_tokens):
                    continue
                hit = self._exact_at(msg, s, listed=True)
                if hit is None or hit[1] is None or self._inside_longer_value(msg, s, hit[0]):
                    continue
                last = self._claim(msg, taken, s, hit[0], hit[2])
                if last >= 0:
                    chosen.append(hit[1])
                    last_tokens.add(last)
                    grew = True
        chosen.extend(self._fuzzy_items(msg, taken))
        return sorted(chosen, key=lambda m: m.start)

    def _inside_longer_value(self, msg: _Text, s: int, e: int) -> bool:
        """The span is part of a longer multi-word attribute value: "Keanu" in "Keanu Reeves" names the
        actor, not the film "Keanu"."""
        norms = msg.norms
        for s2 in range(max(0, s - 3), s + 1):
            for e2 in range(e, min(len(norms), e + 3) + 1):
                if e2 - s2 > e - s and " ".join(norms[s2:e2]) in self._attr:
                    return True
        return False

    @staticmethod
    def _claim(msg: _Text, taken: list[bool], s: int, e: int, end: int) -> int:
        """Mark tokens s..e (and a consumed year up to ``end``) as used, unless any already is.

        Returns the index of the last token claimed, or -1."""
        stop = e
        while stop < len(msg.tokens) and msg.tokens[stop].start < end:
            stop += 1
        if any(taken[s:stop]):
            return -1
        for k in range(s, stop):
            taken[k] = True
        return stop - 1

    def _fuzzy_items(self, msg: _Text, taken: list[bool]) -> list[ItemMention]:
        keys = self._title_fuzzy_keys
        scored = self._fuzzy_spans(msg, taken, keys, self._title_prefix, _FUZZY_TITLE_CUTOFF, 8)
        out = []
        for s, e, k_index, ratio in scored:
            key = keys[k_index]
            if self._sequel_follows(msg, e):
                continue
            result = self._mention(msg, s, e, key, self._candidates(key), 0.9 * ratio / 100, _FREE)
            if result is not None and self._claim(msg, taken, s, e, result[1]) >= 0:
                out.append(result[0])
        return out

    @staticmethod
    def _fuzzy_spans(msg: _Text, taken: list[bool], keys: list[str],
                     prefix: dict[str, list[tuple[int, int, int]]], cutoff: float,
                     min_chars: int) -> list[tuple[int, int, int, float]]:
        """Best-first (start, end, key index, ratio) for free multi-word spans close to an indexed key."""
        norms = msg.norms
        n_tokens = len(norms)
        best: dict[tuple[int, int], tuple[float, int]] = {}
        tried: set[tuple[int, int, int]] = set()
        spans: dict[tuple[int, int], str] = {}
        for i, word in enumerate(norms):
            if taken[i] or len(word) < 3 or word in _STOPWORDS:
                continue
            for k_index, pos, width in prefix.get(word[:3], ()):
                s = i - pos
                e = s + width
                if s < 0 or e > n_tokens or (s, e, k_index) in tried:
                    continue
                tried.add((s, e, k_index))
                span = spans.get((s, e))
                if span is None:
                    span = spans[(s, e)] = " ".join(norms[s:e])
                key = keys[k_index]
                if span == key or len(span) < min_chars or any(taken[s:e]) or all(
                        w in _STOPWORDS or w in _COMMON_WORDS for w in norms[s:e]):
                    continue  # an everyday phrase ("last night") is not a typo of a title
                ratio = fuzz.ratio(span, key, score_cutoff=cutoff)
                if ratio and ratio > best.get((s, e), (0.0, -1))[0] and _tokens_differ_ok(
                        norms[s:e], key.split()):
                    best[(s, e)] = (ratio, k_index)
        ranked = [(s, e, k_index, ratio) for (s, e), (ratio, k_index) in best.items()]
        ranked.sort(key=lambda r: (-r[3], -(r[1] - r[0]), r[0]))
        return ranked

    # ------------------------------------------------------------------ attributes

    def link_attributes(self, text: str, fields: Iterable[str] | None = None) -> list[AttributeMention]:
        """Attribute values (genres, people, brands, ...) named in ``text``, one mention per field.

        Case-insensitive on word boundaries, with simple plurals ("comedies" -> "comedy"); longer spans win
        over the shorter ones inside them; multi-word values also match fuzzily (ratio >= 92).
        ``fields`` restricts the fields considered.
        """
        msg = _Text(text)
        if not msg.tokens:
            return []
        allowed = set(fields) if fields is not None else None
        norms = msg.norms
        found: list[tuple[int, int, list[_AttrEntry]]] = []
        for s in range(len(norms)):
            for n in range(min(self._attr_max_n, len(norms) - s), 0, -1):
                e = s + n
                key = " ".join(norms[s:e])
                entries = self._attr.get(key)
                if entries is None:
                    # Plurals either way: "comedies" finds "comedy", "headphone" finds "headphones".
                    head, _, last = key.rpartition(" ")
                    for form in _number_forms(last):
                        entries = self._attr.get(f"{head} {form}" if head else form)
                        if entries is not None:
                            break
                if entries is None and n <= 4:
                    target = self._attr_compact.get("".join(norms[s:e]))
                    entries = self._attr.get(target) if target is not None else None
                if entries is None:
                    continue
                capitalised = msg.tokens[s].orig[:1].isupper() and msg.has_lower
                usable = [x for x in entries if (allowed is None or x.field in allowed)
                          and (not x.needs_caps or capitalised)]
                if usable:
                    found.append((s, e, usable))
                    break
        taken = [False] * len(norms)
        chosen: list[tuple[int, int, list[_AttrEntry]]] = []
        found.sort(key=lambda f: (-(f[1] - f[0]), f[0]))
        for s, e, entries in found:
            if not any(taken[s:e]):
                taken[s:e] = [True] * (e - s)
                chosen.append((s, e, entries))
        keys = self._attr_fuzzy_keys
        for s, e, k_index, _ in self._fuzzy_spans(msg, taken, keys, self._attr_prefix, _FUZZY_ATTR_CUTOFF, 6):
            if any(taken[s:e]):
                continue
            entries = [x for x in self._attr[keys[k_index]] if allowed is None or x.field in allowed]
            if entries:
                taken[s:e] = [True] * (e - s)
                chosen.append((s, e, entries))
        out: list[AttributeMention] = []
        for s, e, entries in sorted(chosen, key=lambda c: c[0]):
            start, end = msg.tokens[s].start, msg.tokens[e - 1].end
            seen_fields: set[str] = set()
            for entry in entries:
                if entry.field not in seen_fields:
                    seen_fields.add(entry.field)
                    out.append(AttributeMention(entry.field, entry.value, text[start:end], start, end))
        return out

    # ------------------------------------------------------------------ titles from datasets

    def resolve_title(self, title: str) -> str | None:
        """Item id for a title string such as "Heat (1995)" or "the matrix"; None when unsure.

        Exact normalised match first (a given year picks among remakes, allowing one year of slack between
        sources), then fuzzy (ratio >= 92) among items of the same year when a year is given.
        """
        year = title_year(title)
        key = normalize_title(title)
        if not key:
            return None
        indices = self._candidates(key)
        if not indices and key.replace(" ", "") in self._compact:
            key = self._compact[key.replace(" ", "")]
            indices = self._candidates(key)
        if indices:
            picked = self._pick_with_year(indices, key, year)
            if picked is not None:
                return self._ids[picked]
        pool = self._keys_by_year.get(year, []) if year is not None else self._all_keys
        matches = process.extract(key, pool, scorer=fuzz.ratio, score_cutoff=_RESOLVE_CUTOFF, limit=5)
        words = key.split()
        good = [(match, score) for match, score, _ in matches if _numbers(match) == _numbers(key) and (
            len(match.split()) != len(words) or _tokens_differ_ok(words, match.split()))]
        if not good:
            return None
        best_key, best_score = good[0]
        # Two different titles about equally close: not sure enough to link.
        if len(good) > 1 and good[1][1] >= best_score - 1 and good[1][0] != best_key and year is None:
            return None
        picked = self._pick_with_year(self._candidates(best_key), best_key, year, slack=0)
        return self._ids[picked] if picked is not None else None

    def _pick_with_year(self, indices: list[int], key: str, year: int | None, slack: int = 1) -> int | None:
        if year is None:
            return self._choose(indices, key)
        for tolerance in range(slack + 1):
            near = [i for i in indices
                    if self._years[i] is not None and abs(self._years[i] - year) <= tolerance]
            if near:
                return self._choose(near, key)
        undated = [i for i in indices if self._years[i] is None]
        return self._choose(undated, key) if undated else None


def _numbers(key: str) -> list[str]:
    return [w for w in key.split() if _is_number_like(w)]
