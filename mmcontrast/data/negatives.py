"""Rule-based hard-negative captions, with no download: NegCLIP's perturbations without spaCy.

NegCLIP (Yuksekgonul et al., ICLR 2023, "When and Why Vision-Language Models Behave like Bags-of-Words")
trains on captions with swapped words, made with spaCy. Here a small closed lexicon (``Vocabulary``) finds
the noun phrases ("a small red circle": determiner, attributes, object) and the relations between two of them
("to the left of") in the demo's grammar and in plain English, and each rule edits exactly one slot, in
SugarCrepe's names (Hsieh et al. 2023):

    swap_att     exchange two attributes of one kind (colours, sizes, …) between two noun phrases
    swap_obj     exchange the two noun phrases around an asymmetric relation ("X left of Y" → "Y left of X")
    replace_att  an attribute → another of its kind from the vocabulary
    replace_obj  an object → another object from the vocabulary
    replace_rel  an asymmetric relation → its converse ("left of" → "right of", never "above": both can hold);
                 one without a converse ("holding") → another from the vocabulary

Only words the vocabulary knows are edited: "corner" in "in the top left corner" is not an object, so no
rule moves it. An article before an edited word follows it ("a red" → "an orange"), so no negative is told
apart by its grammar alone; the article is then part of the edited slot. A caption no rule applies to has no
negative. Every result differs from the caption; which of them a sample gets is the caller's seeded choice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

NEGATIVE_SOURCES = ("", "shards", "rules")  # the loader's ``negatives``: off, from the shards, made here
RULES = ("swap_att", "swap_obj", "replace_att", "replace_obj", "replace_rel")

_ATTRIBUTES = {
    "colour": ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray", "brown", "pink"),
    "size": ("small", "medium", "large", "big", "tiny", "huge"),
    "material": ("wooden", "metal", "plastic", "glass", "stone"),
    "pattern": ("striped", "spotted", "checkered", "dotted"),
}
_OBJECTS = (
    # the demo's shapes (data_prep/shapes.py)
    "circle", "square", "triangle", "star", "hexagon", "cross", "diamond", "ring",
    # common COCO objects, with regular plurals
    "dog", "cat", "horse", "bird", "cow", "sheep", "elephant", "bear", "car", "bus", "truck", "bicycle",
    "motorcycle", "train", "boat", "plane", "table", "chair", "bench", "bed", "couch", "umbrella", "bag",
    "bottle", "cup", "bowl", "plate", "pizza", "cake", "sandwich", "banana", "apple", "clock", "vase", "book",
    "phone", "laptop", "kite", "ball", "frisbee", "skateboard", "surfboard", "tree", "house", "sign", "box",
    "man", "woman", "child", "boy", "girl", "person",
)
_ASYMMETRIC = ("to the left of", "to the right of", "above", "below", "on top of", "under", "behind",
               "in front of", "inside", "on", "holding", "riding", "carrying")
_SYMMETRIC = ("next to", "near", "beside", "with", "and")  # found, so that no noun phrase runs across them
# A relation with a converse is replaced by it alone: "X left of Y" makes "X right of Y" false, whereas "X above Y"
# can be true as well (a diagonal pair) — on the demo's scenes 17 % of any-relation replacements were true captions.
_CONVERSES = {"to the left of": "to the right of", "above": "below", "on top of": "under", "in front of": "behind"}
_CONVERSES.update({b: a for a, b in list(_CONVERSES.items())})
_DETERMINERS = frozenset({"a", "an", "the", "one", "two", "three", "four", "five", "some", "this", "that",
                          "his", "her", "their", "its", "another"})
_PUNCTUATION = ",.;:!?\"')"


@dataclass(frozen=True)
class Vocabulary:
    """The words the rules recognise and draw replacements from."""
    attributes: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(_ATTRIBUTES))  # kind → words
    objects: tuple[str, ...] = _OBJECTS          # singular; a regular plural ("circles", "boxes") is found too
    relations: tuple[str, ...] = _ASYMMETRIC     # swapped around and replaced by one another

    def kind_of(self, word: str) -> str | None:
        return next((kind for kind, words in self.attributes.items() if word in words), None)

    def found_in(self, captions: list[str]) -> Vocabulary:
        """The part of this vocabulary that ``captions`` use (a batch's): replacements then name only what the
        data shows, so that an out-of-domain word gives no negative away without the image."""
        words = {_core(t) for c in captions for t in c.split()}
        text = " | ".join(" ".join(_core(t) for t in c.split()) for c in captions)  # no relation across two
        return Vocabulary({kind: tuple(w for w in ws if w in words) for kind, ws in self.attributes.items()},
                          tuple(o for o in self.objects if o in words or _plural(o) in words),
                          tuple(r for r in self.relations if f" {r} " in f" {text} "))


VOCABULARY = Vocabulary()


@dataclass(frozen=True)
class Edit:
    """Words ``[start, end)`` of the caption (split on whitespace) replaced by ``words``."""
    start: int
    end: int
    words: tuple[str, ...]


@dataclass(frozen=True)
class Negative:
    text: str
    rule: str                # one of RULES
    edits: tuple[Edit, ...]  # disjoint, in order: the edited slot (two places for swap_att)


def apply_edits(words: list[str], edits: tuple[Edit, ...]) -> list[str]:
    out, at = [], 0
    for e in edits:
        out += words[at:e.start] + list(e.words)
        at = e.end
    return out + words[at:]


@dataclass(frozen=True)
class _Phrase:
    start: int                 # the determiner, or the first attribute when there is none
    head: int                  # the object's word
    det: int | None            # the determiner's index
    plural: bool


def _core(token: str) -> str:
    return token.lower().rstrip(_PUNCTUATION)


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


def _object_of(word: str, vocabulary: Vocabulary) -> tuple[str, bool] | None:
    """(singular, plural?) when ``word`` is a known object."""
    if word in vocabulary.objects:
        return word, False
    return next(((o, True) for o in vocabulary.objects if _plural(o) == word), None)


def _relations(cores: list[str], vocabulary: Vocabulary) -> list[tuple[int, int, bool]]:
    """(start, end, asymmetric) of every relation, longest match first, left to right."""
    known = sorted([(r.split(), True) for r in vocabulary.relations] + [(r.split(), False) for r in _SYMMETRIC],
                   key=lambda r: -len(r[0]))
    found, i = [], 0
    while i < len(cores):
        match = next(((len(words), asym) for words, asym in known if cores[i:i + len(words)] == words), None)
        if match:
            found.append((i, i + match[0], match[1]))
            i += match[0]
        else:
            i += 1
    return found


def _phrases(tokens: list[str], cores: list[str], taken: set[int], vocabulary: Vocabulary) -> list[_Phrase]:
    """Noun phrases [determiner] attribute* object, whose object is in the vocabulary."""
    phrases, i = [], 0
    while i < len(cores):
        det = i if cores[i] in _DETERMINERS and i not in taken else None
        j = i + 1 if det is not None else i
        while j < len(cores) and j not in taken and vocabulary.kind_of(cores[j]) and tokens[j] == tokens[j].rstrip(
                _PUNCTUATION):
            j += 1  # attributes, up to one that ends a clause
        obj = _object_of(cores[j], vocabulary) if j < len(cores) and j not in taken else None
        if obj is not None and (det is not None or j > i or i == 0 or cores[i - 1] not in _DETERMINERS):
            phrases.append(_Phrase(i, j, det, obj[1]))
            i = j + 1
        else:
            i += 1
    return phrases


def _with_article(tokens: list[str], phrase: _Phrase, index: int, new: str) -> Edit:
    """Token ``index`` of ``phrase`` → ``new`` (punctuation kept), its article a/an following when it is first."""
    trailing = tokens[index][len(tokens[index].rstrip(_PUNCTUATION)):]
    det = phrase.det
    if det is not None and det == index - 1 and _core(tokens[det]) in ("a", "an"):
        article = "an" if new[0] in "aeiou" else "a"
        article = article.capitalize() if tokens[det][0].isupper() else article
        if article != tokens[det]:
            return Edit(det, index + 1, (article, new + trailing))
    return Edit(index, index + 1, (new + trailing,))


def candidates(caption: str, vocabulary: Vocabulary = VOCABULARY) -> list[Negative]:
    """Every negative the rules make of ``caption``, in a fixed order (none equals it)."""
    tokens = caption.split()
    cores = [_core(t) for t in tokens]
    relations = _relations(cores, vocabulary)
    taken = {k for start, end, _ in relations for k in range(start, end)}
    phrases = _phrases(tokens, cores, taken, vocabulary)
    edits: list[tuple[str, tuple[Edit, ...]]] = []
    for a_i, a in enumerate(phrases):
        attributes = [k for k in range(a.start, a.head) if k != a.det]
        for k in attributes:
            kind = vocabulary.kind_of(cores[k])
            for new in vocabulary.attributes[kind]:
                if new != cores[k]:
                    edits.append(("replace_att", (_with_article(tokens, a, k, new),)))
            for b in phrases[a_i + 1:]:
                for m in range(b.start, b.head):
                    if m != b.det and vocabulary.kind_of(cores[m]) == kind and cores[m] != cores[k]:
                        edits.append(("swap_att", (_with_article(tokens, a, k, cores[m]),
                                                   _with_article(tokens, b, m, cores[k]))))
        singular = _object_of(cores[a.head], vocabulary)[0]
        for new in vocabulary.objects:
            if new != singular:
                edits.append(("replace_obj", (_with_article(tokens, a, a.head, _plural(new) if a.plural else new),)))
    starts = {p.start: p for p in phrases}
    ends = {p.head + 1: p for p in phrases}
    for start, end, asymmetric in relations:
        left, right = ends.get(start), starts.get(end)
        if not (asymmetric and left and right):
            continue
        x, y = tokens[left.start:left.head + 1], tokens[right.start:right.head + 1]
        if [_core(t) for t in x] != [_core(t) for t in y] and all(t == t.rstrip(_PUNCTUATION) for t in x + y[:-1]):
            edits.append(("swap_obj", (Edit(left.start, right.head + 1, (*y, *tokens[start:end], *x)),)))
        relation = " ".join(cores[start:end])
        converse = _CONVERSES.get(relation)
        for new in [converse] if converse in vocabulary.relations else [] if converse else vocabulary.relations:
            if new != relation:
                edits.append(("replace_rel", (Edit(start, end, tuple(new.split())),)))
    out, seen = [], {caption}
    for rule, e in edits:
        text = " ".join(apply_edits(tokens, e))
        if text not in seen:  # several edits can give one string (a/an); keep the first
            seen.add(text)
            out.append(Negative(text, rule, e))
    return out


def perturb(caption: str, k: int, rng: random.Random, vocabulary: Vocabulary = VOCABULARY) -> list[Negative]:
    """Up to ``k`` distinct negatives of ``caption``: a rule drawn uniformly among those that apply, then one of
    its edits, so that the many replacements do not crowd out the swaps. []: no rule applies."""
    by_rule: dict[str, list[Negative]] = {}
    for n in candidates(caption, vocabulary):
        by_rule.setdefault(n.rule, []).append(n)
    chosen: list[Negative] = []
    while by_rule and len(chosen) < k:
        rule = rng.choice(sorted(by_rule))
        pool = by_rule[rule]
        chosen.append(pool.pop(rng.randrange(len(pool))))
        if not pool:
            del by_rule[rule]
    return chosen
