"""Regenerate the PDF and DOCX documents of the example knowledge base.

Run from the repository root with the dev dependencies installed (reportlab, python-docx):

    .venv/bin/python examples/make_binary_docs.py

The output is byte-for-byte reproducible, so rerunning the script does not show up as a "modified"
document in the next refresh.
"""

from __future__ import annotations

import io
import zipfile
from datetime import datetime
from pathlib import Path

KB = Path(__file__).resolve().parent / "kb"

BOOKING_TITLE = "Halden Institute Biophysics Lab: Equipment Booking Rules"
BOOKING_PARAGRAPHS = [
    "All shared instruments in the Halden Institute biophysics lab are booked through the LabSlot "
    "calendar. Bookings open every Friday at noon for the following week.",
    "The Zeiss confocal microscope in room B214 may be booked for at most four hours per day per person. "
    "Evening sessions that start after 19:00 may run for up to six hours.",
    "The cryo-stage must be returned to room temperature at the end of every session. Users who leave it "
    "cold are charged a cleaning fee of 60 francs.",
    "New users need a one-hour training session with the lab manager, Dr. Petra Lindqvist, before their "
    "first booking. Training runs on Tuesday mornings.",
    "A booking that is not started within 20 minutes of its start time is released to the waiting list. "
    "Three missed bookings in one term suspend booking rights for two weeks.",
]

TRAVEL_TITLE = "Brightwater Analytics Travel Policy"
TRAVEL_SECTIONS = [
    (
        "Booking",
        "Every business trip must be approved by a team lead at least ten working days in advance. "
        "Flights and hotels are booked through the travel desk, Waypoint.",
    ),
    (
        "Flights",
        "Economy class is used for flights under six hours. Premium economy is allowed on longer flights; "
        "business class needs approval from the finance director, Tomas Reyes.",
    ),
    (
        "Hotels and meals",
        "The nightly hotel limit is 160 euros in most cities and 230 euros in London, Zurich and New York. "
        "The daily meal allowance is 55 euros, and alcohol is never reimbursed.",
    ),
    (
        "Expenses",
        "Receipts must be uploaded to the expense system within 30 days of returning. Trains are preferred "
        "over flights for any trip that takes under four hours by rail.",
    ),
]

# Fixed timestamps keep the generated files identical from run to run.
FIXED_TIME = datetime(2025, 1, 6, 9, 0, 0)


def build_booking_pdf() -> bytes:
    from reportlab import rl_config
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer

    rl_config.invariant = 1  # no creation date or random document id in the file
    styles = getSampleStyleSheet()
    story = [Paragraph(BOOKING_TITLE, styles["Title"]), Spacer(1, 12)]
    for text in BOOKING_PARAGRAPHS:
        story += [Paragraph(text, styles["BodyText"]), Spacer(1, 8)]
    out = io.BytesIO()
    SimpleDocTemplate(out, pagesize=A4, title=BOOKING_TITLE, author="Halden Institute").build(story)
    return out.getvalue()


def build_travel_docx() -> bytes:
    import docx

    document = docx.Document()
    document.core_properties.title = TRAVEL_TITLE
    document.core_properties.author = "Brightwater Analytics"
    document.core_properties.created = FIXED_TIME
    document.core_properties.modified = FIXED_TIME
    document.core_properties.last_modified_by = "Brightwater Analytics"
    document.add_heading(TRAVEL_TITLE, level=0)
    for heading, text in TRAVEL_SECTIONS:
        document.add_heading(heading, level=1)
        document.add_paragraph(text)
    out = io.BytesIO()
    document.save(out)
    return _with_fixed_zip_times(out.getvalue())


def _with_fixed_zip_times(data: bytes) -> bytes:
    """Rewrite a ZIP archive with every entry dated FIXED_TIME (python-docx stamps the current time)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            entry = zipfile.ZipInfo(info.filename, date_time=FIXED_TIME.timetuple()[:6])
            entry.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(entry, src.read(info.filename))
    return out.getvalue()


def main() -> None:
    KB.mkdir(parents=True, exist_ok=True)
    for name, data in [
        ("equipment-booking.pdf", build_booking_pdf()),
        ("travel-policy.docx", build_travel_docx()),
    ]:
        (KB / name).write_bytes(data)
        print(f"wrote {KB / name} ({len(data)} bytes)")


if __name__ == "__main__":
    main()
