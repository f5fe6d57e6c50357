"""Tests for unlearn_core.concepts: the concept-set text format, files and presets."""

import json
import re

import pytest
import yaml

from unlearn_core.concepts import (
    ConceptPair,
    ConceptSet,
    ConceptSetError,
    load_concept_file,
    load_preset,
    parse_concept_text,
    preset_names,
)

EXAMPLE = """\
# erase two artists
Van Gogh -> a famous artist     # trailing comment
nudity ->
   Claude Monet, Salvador Dali → a painting
keep: a photo of a dog
KEEP:   a painting in the style of Rembrandt   # comment
template: a painting in the style of {}
Template: art by {}

"""


def _expect_error(text, *fragments):
    with pytest.raises(ConceptSetError) as info:
        parse_concept_text(text)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


# --------------------------------------------------------------------------- parsing


def test_parse_every_line_kind():
    cs = parse_concept_text(EXAMPLE, name="mine")
    assert cs.name == "mine"
    assert cs.pairs == (
        ConceptPair("Van Gogh", "a famous artist"),
        ConceptPair("nudity", ""),
        ConceptPair("Claude Monet, Salvador Dali", "a painting"),  # commas are part of the text
    )
    assert cs.keep == ("a photo of a dog", "a painting in the style of Rembrandt")
    assert cs.templates == ("a painting in the style of {}", "art by {}")


def test_comments_only_start_after_whitespace():
    cs = parse_concept_text("C# code -> code  # a comment\n# whole line\n   # indented comment")
    assert cs.pairs == (ConceptPair("C# code", "code"),)


def test_unicode_arrow_and_whitespace_trimmed():
    cs = parse_concept_text("  \tMickey Mouse\u2192  a cartoon character \t")
    assert cs.pairs == (ConceptPair("Mickey Mouse", "a cartoon character"),)


def test_empty_anchor_is_unconditional_and_not_templated():
    cs = parse_concept_text("nudity ->\ntemplate: a photo of {}")
    assert cs.pairs[0].anchor == ""
    assert cs.prompt_pairs() == [("a photo of nudity", "")]


def test_keep_line_may_contain_arrow():
    cs = parse_concept_text("keep: a -> b\nx -> y")
    assert cs.keep == ("a -> b",)


def test_template_expansion_counts_and_exact_strings():
    cs = parse_concept_text(
        "Van Gogh -> a famous artist\n"
        "golf ball -> ball\n"
        "template: a painting in the style of {}\n"
        "template: {} , photo\n"
        "template: art by {}\n"
    )
    pp = cs.prompt_pairs()
    assert len(pp) == 2 * 3
    assert pp[0] == ("a painting in the style of Van Gogh", "a painting in the style of a famous artist")
    assert pp[1] == ("Van Gogh , photo", "a famous artist , photo")
    assert pp[5] == ("art by golf ball", "art by ball")


def test_no_templates_uses_bare_text():
    cs = parse_concept_text("Van Gogh -> a painting\nnudity ->")
    assert cs.prompt_pairs() == [("Van Gogh", "a painting"), ("nudity", "")]


def test_other_braces_in_template_are_literal():
    cs = ConceptSet(pairs=(ConceptPair("cat", "dog"),), templates=("{name} {} {{x}}",))
    assert cs.prompt_pairs() == [("{name} cat {{x}}", "{name} dog {{x}}")]


def test_duplicates_removed_in_order():
    cs = parse_concept_text(
        "b -> x\na -> x\nb  ->  x\nb -> y\nkeep: k\nkeep: k\ntemplate: {} t\ntemplate: {} t\n"
    )
    assert cs.pairs == (ConceptPair("b", "x"), ConceptPair("a", "x"), ConceptPair("b", "y"))
    assert cs.keep == ("k",)
    assert cs.templates == ("{} t",)


# --------------------------------------------------------------------------- errors


def test_error_unknown_line_names_line_and_forms():
    msg = _expect_error("a -> b\n\nthis line is wrong\n", "line 3", "this line is wrong", '"target -> anchor"', "keep:", "preset: name")
    assert "template:" in msg


def test_error_unknown_key_prefix():
    _expect_error("a -> b\nkeeep: a dog", "line 2", "keeep: a dog")


def test_error_empty_target():
    _expect_error("a -> b\n# c\n  -> a painting", "line 3", "empty target", "-> a painting")
    _expect_error("\u2192 x", "line 1", "empty target")


def test_error_several_arrows():
    _expect_error("a -> b -> c", "line 1", "more than one")


@pytest.mark.parametrize(
    "line, found",
    [("template: a painting", "found 0"), ("template: {} and {}", "found 2"), ("template:", "found 0")],
)
def test_error_bad_template(line, found):
    _expect_error(f"a -> b\n{line}", "line 2", found, "exactly one", line)


def test_error_empty_keep():
    _expect_error("a -> b\nkeep:   # nothing", "line 2", "empty keep prompt")


def test_error_unknown_preset_lists_valid_ones():
    msg = _expect_error("a -> b\n\npreset: artsy", "line 3", "unknown preset", "'artsy'")
    for name in preset_names():
        assert name in msg


def test_error_nothing_to_erase():
    _expect_error("# only comments\nkeep: a dog\ntemplate: {}", "nothing to erase", "Van Gogh -> a painting")
    _expect_error("", "nothing to erase")


def test_constructor_validates():
    with pytest.raises(ConceptSetError, match="target"):
        ConceptPair("  ", "x")
    with pytest.raises(ConceptSetError, match="exactly one"):
        ConceptSet(pairs=(ConceptPair("a", "b"),), templates=("no braces",))
    with pytest.raises(ConceptSetError, match="keep"):
        ConceptSet(pairs=(ConceptPair("a", "b"),), keep=(" ",))


# --------------------------------------------------------------------------- dict / files


def test_dict_round_trip_and_string_pairs():
    cs = parse_concept_text(EXAMPLE, name="mine")
    d = cs.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert ConceptSet.from_dict(d) == cs
    alt = ConceptSet.from_dict({"pairs": ["Van Gogh -> a painting", "nudity ->", {"target": "x", "anchor": None}]})
    assert alt.pairs == (ConceptPair("Van Gogh", "a painting"), ConceptPair("nudity", ""), ConceptPair("x", ""))


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"pairs": ["a -> b", "c -> d", {"anchor": "x"}]}, "pairs[2].target: missing"),
        ({"pairs": [{"target": "a"}]}, "pairs[0].anchor: missing"),
        ({"pairs": [{"target": " ", "anchor": ""}]}, "pairs[0].target"),
        ({"pairs": ["no arrow here"]}, "pairs[0]"),
        ({"pairs": [{"target": "a", "anchor": "b", "anker": 1}]}, "'anker'"),
        ({"pairs": []}, "nothing to erase"),
        ({"keep": ["x"]}, "pairs: missing"),
        ({"pairs": ["a -> b"], "keep": [""]}, "keep[0]"),
        ({"pairs": ["a -> b"], "templates": ["x", "y"]}, "templates[0]"),
        ({"pairs": ["a -> b"], "keep": "one string"}, "keep: expected a list"),
        ({"pairs": ["a -> b"], "colour": 1}, "'colour'"),
        (["a -> b"], "top level"),
    ],
)
def test_from_dict_errors_name_the_field(data, fragment):
    with pytest.raises(ConceptSetError) as info:
        ConceptSet.from_dict(data)
    assert fragment in str(info.value)


def test_json_and_yaml_files_round_trip(tmp_path):
    cs = parse_concept_text(EXAMPLE, name="mine")
    j = tmp_path / "set.json"
    j.write_text(json.dumps(cs.to_dict()), encoding="utf-8")
    y = tmp_path / "set.yml"
    y.write_text(yaml.safe_dump(cs.to_dict(), allow_unicode=True), encoding="utf-8")
    y2 = tmp_path / "set2.YAML"
    y2.write_text(yaml.safe_dump(cs.to_dict()), encoding="utf-8")
    for path in (j, str(y), y2):
        loaded = load_concept_file(path)
        assert loaded == cs
        assert ConceptSet.from_dict(loaded.to_dict()) == loaded


def test_yaml_string_pairs_and_name_from_stem(tmp_path):
    p = tmp_path / "my_erasure.yaml"
    p.write_text("pairs:\n  - Van Gogh -> a painting\n  - nudity ->\ntemplates: ['art by {}']\n", encoding="utf-8")
    cs = load_concept_file(p)
    assert cs.name == "my_erasure"
    assert cs.prompt_pairs() == [("art by Van Gogh", "art by a painting"), ("art by nudity", "")]


def test_txt_file_and_errors_name_the_file(tmp_path):
    good = tmp_path / "style.txt"
    good.write_text("\ufeffVan Gogh -> a painting\nkeep: a dog\n", encoding="utf-8")
    cs = load_concept_file(good)
    assert cs.name == "style" and cs.pairs == (ConceptPair("Van Gogh", "a painting"),)

    bad = tmp_path / "bad.txt"
    bad.write_text("a -> b\noops\n", encoding="utf-8")
    with pytest.raises(ConceptSetError, match=r"bad\.txt: line 2"):
        load_concept_file(bad)

    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps({"pairs": ["a -> b", {"anchor": "c"}]}), encoding="utf-8")
    with pytest.raises(ConceptSetError, match=re.escape("bad.json: pairs[1].target: missing")):
        load_concept_file(bad_json)

    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConceptSetError, match=r"broken\.json: invalid JSON"):
        load_concept_file(broken)


def test_bad_extension_lists_allowed(tmp_path):
    p = tmp_path / "set.csv"
    p.write_text("a -> b", encoding="utf-8")
    with pytest.raises(ConceptSetError) as info:
        load_concept_file(p)
    msg = str(info.value)
    for ext in (".txt", ".json", ".yaml", ".yml"):
        assert ext in msg
    with pytest.raises(ConceptSetError, match="cannot read"):
        load_concept_file(tmp_path / "missing.txt")


# --------------------------------------------------------------------------- presets


def test_preset_names():
    assert {"artist_style", "object", "nudity", "character"} <= set(preset_names())


@pytest.mark.parametrize("name", ["artist_style", "object", "nudity", "character"])
def test_presets_load_and_are_sane(name):
    cs = load_preset(name)
    assert cs.name == name
    assert len(cs.pairs) >= 1
    assert 3 <= len(cs.templates) <= 8
    assert all(t.count("{}") == 1 for t in cs.templates)
    assert 3 <= len(cs.keep) <= 6
    assert len(cs.prompt_pairs()) == len(cs.pairs) * len(cs.templates)


def test_preset_contents():
    art = load_preset("Artist-Style")
    assert ConceptPair("Van Gogh", "a famous artist") in art.pairs
    assert "a painting in the style of Claude Monet" in art.keep
    assert ("a painting in the style of Van Gogh", "a painting in the style of a famous artist") in art.prompt_pairs()
    assert "a photo of a golf ball" in [t for t, _ in load_preset("object").prompt_pairs()]
    assert "nudity" in load_preset("nudity").targets
    assert "Mickey Mouse" in load_preset("character").targets


def test_unknown_preset_direct():
    with pytest.raises(ConceptSetError, match="valid presets are: .*artist_style"):
        load_preset("nope")


def test_preset_include_merges_in_order():
    art = load_preset("artist_style")
    cs = parse_concept_text("Salvador Dali -> a famous artist\npreset: artist_style\nkeep: a photo of a cat\nVan Gogh -> a famous artist")
    assert cs.pairs == (ConceptPair("Salvador Dali", "a famous artist"),) + art.pairs  # duplicate Van Gogh dropped
    assert cs.templates == art.templates
    assert cs.keep == art.keep + ("a photo of a cat",)
    assert len(cs.prompt_pairs()) == 2 * len(art.templates)


def test_preset_only_is_enough():
    cs = parse_concept_text("preset: object\npreset: nudity")
    assert len(cs.pairs) == len(load_preset("object").pairs) + len(load_preset("nudity").pairs)


def test_dict_presets_field():
    cs = ConceptSet.from_dict({"presets": ["character"], "keep": ["a photo of a cat"]})
    assert cs.pairs == load_preset("character").pairs
    assert cs.keep[-1] == "a photo of a cat"


# --------------------------------------------------------------------------- merge / summary


def test_merged():
    a = ConceptSet(pairs=(ConceptPair("a", "x"),), keep=("k1",), templates=("{} 1",), name="A")
    b = ConceptSet(pairs=(ConceptPair("b", ""), ConceptPair("a", "x")), keep=("k2", "k1"), templates=("{} 2",))
    m = a.merged(b)
    assert m.pairs == (ConceptPair("a", "x"), ConceptPair("b", ""))
    assert m.keep == ("k1", "k2")
    assert m.templates == ("{} 1", "{} 2")
    assert m.name == "A"
    assert b.merged(a).name == "A"
    assert len(m.prompt_pairs()) == 4


def test_summary_mentions_everything():
    cs = parse_concept_text(EXAMPLE, name="mine")
    s = cs.summary()
    assert "\n" in s
    for target in cs.targets:
        assert target in s
    assert "Van Gogh -> a famous artist" in s
    assert "unconditional" in s  # nudity's empty anchor
    for t in cs.templates:
        assert t in s
    for k in cs.keep:
        assert k in s
    assert len(cs.prompt_pairs()) == 6
    assert "Prompt pairs trained (6):" in s
    assert "mine" in s


def test_preset_self_include_is_reported(tmp_path, monkeypatch):
    import unlearn_core.concepts as concepts

    (tmp_path / "loop.txt").write_text("a -> b\npreset: loop\n", encoding="utf-8")
    monkeypatch.setattr(concepts, "_presets_dir", lambda: tmp_path)
    assert preset_names() == ["loop"]
    with pytest.raises(ConceptSetError, match="includes itself"):
        load_preset("loop")


# ------------------------------------------------------------------ templates and anchors (issue 15 item 7)


def test_template_does_not_wrap_an_anchor_the_template_already_says():
    cs = parse_concept_text("Van Gogh -> a painting\ntemplate: a painting by {}\ntemplate: art by {}")
    # "a painting" is what the first template says around {}: it is a whole prompt under every template
    assert cs.prompt_pairs() == [("a painting by Van Gogh", "a painting"), ("art by Van Gogh", "a painting")]


def test_template_fills_a_name_anchor_like_its_target():
    cs = parse_concept_text("Van Gogh -> Claude Monet\ntemplate: a painting by {}")
    assert cs.prompt_pairs() == [("a painting by Van Gogh", "a painting by Claude Monet")]


def test_quoted_anchor_is_used_as_written_and_empty_anchor_stays_unconditional():
    cs = parse_concept_text('Van Gogh -> "an oil painting"\nnudity ->\ntemplate: art by {}\nkeep: art by Rembrandt')
    assert cs.prompt_pairs() == [("art by Van Gogh", "an oil painting"), ("art by nudity", "")]
    assert cs.keep == ("art by Rembrandt",)  # keep prompts are final prompts, never templated


def test_presets_still_template_their_anchors():
    assert load_preset("object").prompt_pairs()[0] == ("a photo of a golf ball", "a photo of a ball")


def test_summary_lists_the_resolved_prompt_pairs_and_stays_short():
    summary = parse_concept_text("Van Gogh -> a painting\ntemplate: a painting by {}").summary()
    assert '"a painting by Van Gogh" -> "a painting"' in summary
    big = ConceptSet(pairs=tuple(ConceptPair(f"t{i}", "a") for i in range(100)), templates=("x {}",))
    lines = big.summary().splitlines()
    assert "  ... and 88 more" in lines and sum(line.startswith('  "x t') for line in lines) == 12
