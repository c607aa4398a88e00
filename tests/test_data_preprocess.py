"""preprocess_corpus: text cleanup, exact and near dedup, PII scrubbing, and the counts it reports."""

import datasets
import pytest

from fastalign.data import CleaningOptions, RegexScrubber, demo_data_path, load_records, preprocess_corpus
from fastalign.data.pii import PII_SCRUBBERS, passes_luhn_check
from fastalign.data.text_cleanup import normalize_text

ONLY_CLEANUP = dict(exact_dedup=False, near_dedup=False, scrub_pii=False)


def corpus(*texts):
    return datasets.Dataset.from_dict({"text": list(texts)})


def test_cleanup_normalizes_unicode_whitespace_and_control_characters():
    decomposed = "Cafe\u0301"  # "e" + combining acute accent: NFC composes it to one code point
    messy = f"  {decomposed}\t\tmenu  \r\n\r\n\r\n\n\nline\x07 two \x00 \n"
    assert normalize_text(messy) == "Caf\u00e9 menu\n\nline two"


def test_cleanup_counts_changed_documents_and_removes_empty_ones():
    cleaned, report = preprocess_corpus(
        corpus("fine", "two  spaces", " \x07 ", "also fine"), CleaningOptions(**ONLY_CLEANUP)
    )
    assert cleaned["text"] == ["fine", "two spaces", "also fine"]
    assert (report.loaded, report.normalized, report.empty_removed, report.examples) == (4, 2, 1, 3)
    assert report.exact_duplicates_removed is None and report.pii_replacements is None  # steps that did not run


def test_exact_dedup_ignores_case_and_whitespace_and_keeps_the_first():
    options = CleaningOptions(normalize_text=False, near_dedup=False, scrub_pii=False)
    kept, report = preprocess_corpus(
        corpus("Reset the hub.", "reset  the HUB.", "Update firmware.", "Reset the hub."), options
    )
    assert kept["text"] == ["Reset the hub.", "Update firmware."]
    assert report.exact_duplicates_removed == 2


def test_near_dedup_removes_small_edits_but_keeps_different_documents():
    base = (
        "To factory reset the Homely Hub press and hold the reset button on the back for fifteen seconds until the "
        "LED turns red then remove the hub from your account before you set it up again"
    )
    edited = base + " thanks"  # true Jaccard of the 3-word shingle sets: 33/35
    different = "Firmware updates install automatically at night between two and five when no automation is running"
    options = CleaningOptions(exact_dedup=False, scrub_pii=False)
    kept, report = preprocess_corpus(corpus(base, edited, different), options)
    assert kept["text"] == [base, different]
    assert report.near_duplicates_removed == 1


def test_pii_is_replaced_by_placeholders_and_counted_by_kind():
    text = (
        "Write to jane.doe@example.com or call +1 (555) 013-2047. Card 4111 1111 1111 1111, not 4111 1111 1111 1112. "
        "Hub at 192.168.1.10 and fe80::1ff:fe23:4567:890a. Firmware 3.4.2, order 48213977, at 10:30:00 on 2024-05-17."
    )
    cleaned, report = preprocess_corpus(corpus(text), CleaningOptions(exact_dedup=False, near_dedup=False))
    assert cleaned["text"] == [
        "Write to <EMAIL> or call <PHONE>. Card <CREDIT_CARD>, not 4111 1111 1111 1112. "
        "Hub at <IP_ADDRESS> and <IP_ADDRESS>. Firmware 3.4.2, order 48213977, at 10:30:00 on 2024-05-17."
    ]
    assert report.pii_replacements == {"email": 1, "credit_card": 1, "ip_address": 2, "phone": 1}


def test_luhn_check():
    assert passes_luhn_check("4111-1111-1111-1111") and passes_luhn_check("5555555555554444")
    assert not passes_luhn_check("4111111111111112")
    assert not passes_luhn_check("0000")  # too short to be a card number


def test_user_scrubbers_from_patterns_and_objects():
    class ShoutedSerials:
        name = "serial"

        def scrub(self, text):
            return text.replace("SN-XYZ", "<SERIAL>"), text.count("SN-XYZ")

    options = CleaningOptions(
        exact_dedup=False,
        near_dedup=False,
        pii_kinds=["email"],
        extra_pii_patterns={"employee_id": r"EMP-\d{6}"},
        extra_pii_scrubbers=[ShoutedSerials(), RegexScrubber("ticket", r"#T\d+", placeholder="[TICKET]")],
    )
    cleaned, report = preprocess_corpus(corpus("EMP-123456 saw SN-XYZ in #T99 from a@b.io, call 555-013-2047"), options)
    assert cleaned["text"] == ["<EMPLOYEE_ID> saw <SERIAL> in [TICKET] from <EMAIL>, call 555-013-2047"]
    assert report.pii_replacements == {"email": 1, "employee_id": 1, "serial": 1, "ticket": 1}


def test_unknown_pii_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown PII kinds"):
        preprocess_corpus(corpus("x"), CleaningOptions(pii_kinds=["passport"]))


def test_demo_corpus_counts():
    """The bundled corpus plants 6 exact duplicates, 6 near duplicates (one more pair is similar by chance), 10
    messy documents and 15 with fake PII; these counts pin the committed data and the defaults together."""
    raw = load_records(demo_data_path("cpt_train"))
    cleaned, report = preprocess_corpus(raw)
    assert report.loaded == len(raw) == 232
    assert report.normalized == 10
    assert report.exact_duplicates_removed == 6
    assert report.near_duplicates_removed == 7
    assert set(report.pii_replacements) == set(PII_SCRUBBERS) and all(report.pii_replacements.values())
    assert report.examples == len(cleaned) == 232 - 6 - 7
    assert not any("@example." in text for text in cleaned["text"])
    assert "exact duplicates removed" in str(report)
