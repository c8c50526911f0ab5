"""Screen reading with the real PP-OCR models on screenshots drawn with known text.

Screens are drawn with Pillow at real UI sizes (13-16 px text at 1920×1080, light and dark themes, a
terminal in a monospace font), so every string's position is known. Timings are printed, not asserted:
the test machines are shared and noisy.
"""

from __future__ import annotations

import base64
import io
import re
import struct
import time
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from rapidocr import RapidOCR

from engine.vision.screen_image import MAX_PIXELS, ScreenImageError, decode_data_url, decode_image
from engine.vision.screen_reader import ScreenReader
from engine.vision.screen_text import ScreenLine, ScreenText

# --- drawing screens with known text ---------------------------------------------------------------

# Font files by family, most common first; Pillow also searches the system font folders by file name.
_FONT_FILES = {
    "sans": ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "Arial.ttf", "arial.ttf"),
    "bold": ("DejaVuSans-Bold.ttf", "LiberationSans-Bold.ttf", "Arial Bold.ttf", "arialbd.ttf"),
    "serif": ("DejaVuSerif.ttf", "LiberationSerif-Regular.ttf", "Times New Roman.ttf", "times.ttf"),
    "mono": ("DejaVuSansMono.ttf", "LiberationMono-Regular.ttf", "Menlo.ttc", "consola.ttf"),
}


def font(family: str, size: int) -> ImageFont.FreeTypeFont:
    for name in _FONT_FILES[family]:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)  # Pillow's own scalable font: the screens still have real text


@dataclass(frozen=True)
class Known:
    text: str
    x: int  # where it was drawn
    y: int
    top: int  # its ink's extent
    bottom: int


class Screen:
    def __init__(self, width: int, height: int, background: tuple[int, int, int]):
        self.image = Image.new("RGB", (width, height), background)
        self.draw = ImageDraw.Draw(self.image)
        self.known: list[Known] = []

    def text(self, x: int, y: int, text: str, family: str, size: int, color: tuple[int, int, int]) -> None:
        face = font(family, size)
        self.draw.text((x, y), text, font=face, fill=color)
        left, top, right, bottom = self.draw.textbbox((x, y), text, font=face)
        self.known.append(Known(text, x, y, top, bottom))

    def box(self, left: int, top: int, right: int, bottom: int, color: tuple[int, int, int]) -> None:
        self.draw.rectangle([left, top, right, bottom], fill=color)

    def encoded(self, kind: str = "PNG", **options) -> bytes:
        out = io.BytesIO()
        self.image.save(out, kind, **options)
        return out.getvalue()


def office_screen() -> Screen:
    """A light word processor with a comments sidebar, a form, a terminal and a status bar."""
    ink, grey, panel = (20, 20, 20), (85, 85, 95), (236, 238, 242)
    screen = Screen(1920, 1080, (250, 250, 250))
    screen.box(0, 0, 1920, 32, (60, 63, 70))
    screen.text(12, 8, "Quarterly Report.odt - Writer", "sans", 14, (240, 240, 240))
    screen.text(1780, 8, "Wed 14:05", "sans", 14, (240, 240, 240))
    for index, item in enumerate(["File", "Edit", "View", "Insert", "Format", "Tools", "Help"]):
        screen.text(12 + index * 80, 42, item, "sans", 13, ink)
    screen.text(80, 110, "Quarterly revenue summary", "bold", 28, ink)
    body = [
        "Revenue grew 12% to $4.2 million in the third quarter.",
        "The Berlin office signed 37 new customers in September.",
        "Churn fell from 5.1% to 3.8% after the onboarding redesign.",
        "Next review meeting: Thursday, October 17 at 10:30 AM.",
        "Open action items are tracked in ticket PROJ-2291.",
    ]
    for index, line in enumerate(body):
        screen.text(80, 170 + index * 30, line, "serif", 16, ink)
    screen.box(1300, 90, 1880, 330, panel)
    screen.text(1320, 105, "Comments", "bold", 16, ink)
    comments = [
        "Maria: please check the churn number",
        "Tom: approved the budget for Q4",
        "Reminder: submit expenses by Friday",
        "Draft saved 2 minutes ago",
    ]
    for index, line in enumerate(comments):
        screen.text(1320, 140 + index * 26, line, "sans", 13, grey)
    form = [("Invoice number", "INV-20931"), ("Client", "Northwind Traders"), ("Total due", "$1,249.50")]
    for index, (label, value) in enumerate(form):
        screen.text(80, 360 + index * 28, label, "sans", 15, ink)
        screen.text(700, 360 + index * 28, value, "sans", 15, ink)
    screen.box(80, 620, 1100, 1000, (12, 12, 12))
    screen.box(80, 620, 1100, 646, (50, 50, 50))
    screen.text(92, 626, "user@laptop: ~/projects/confide", "sans", 13, (230, 230, 230))
    terminal = [
        ("$ git status", (230, 230, 230)),
        ("On branch main", (230, 230, 230)),
        ("modified:   engine/server.py", (220, 60, 60)),
        ("$ pytest -q tests/unit", (230, 230, 230)),
        ("42 passed, 1 failed in 3.27s", (80, 220, 80)),
        ("FAILED test_login.py::test_expired_token", (220, 60, 60)),
    ]
    for index, (line, color) in enumerate(terminal):
        screen.text(96, 660 + index * 22, line, "mono", 14, color)
    screen.box(0, 1052, 1920, 1080, panel)
    screen.text(12, 1058, "Page 3 of 12", "sans", 13, grey)
    screen.text(300, 1058, "Words: 2,481", "sans", 13, grey)
    screen.text(1780, 1058, "English (US)", "sans", 13, grey)
    return screen


def chat_screen() -> Screen:
    """A dark chat app: channel list, messages with authors and times, a compose box."""
    text, dim, side = (225, 225, 230), (150, 150, 160), (26, 27, 31)
    screen = Screen(1920, 1080, (36, 37, 42))
    screen.box(0, 0, 300, 1080, side)
    screen.text(20, 20, "Acme Workspace", "bold", 16, text)
    for index, channel in enumerate(["# general", "# design-review", "# release-2.4", "# random"]):
        screen.text(24, 70 + index * 30, channel, "sans", 14, dim)
    screen.text(340, 20, "# release-2.4", "bold", 18, text)
    screen.text(1600, 24, "12 members", "sans", 13, dim)
    messages = [
        ("Priya Shah", "9:41 AM", "The build for version 2.4.1 is green on all platforms."),
        ("Daniel Okafor", "9:43 AM", "Great, I will tag the release after lunch."),
        ("Priya Shah", "9:44 AM", "Please update the changelog first: the export fix is missing."),
        ("Lena Fischer", "10:02 AM", "QA found one blocker: crash when opening files over 2 GB."),
    ]
    for index, (author, when, message) in enumerate(messages):
        y = 90 + index * 80
        screen.text(340, y, author, "bold", 15, text)
        screen.text(1700, y, when, "sans", 13, dim)
        screen.text(340, y + 28, message, "sans", 15, text)
    screen.box(330, 990, 1890, 1050, (50, 52, 58))
    screen.text(350, 1010, "Message #release-2.4", "sans", 14, dim)
    return screen


def dialog_region() -> Screen:
    """A 640×300 crop of a screen: one confirmation dialog."""
    screen = Screen(640, 300, (245, 245, 247))
    screen.text(32, 30, "Delete 3 files?", "bold", 18, (20, 20, 20))
    screen.text(32, 80, "This action cannot be undone.", "sans", 14, (60, 60, 60))
    screen.text(32, 108, "Files will be removed from Shared Drive.", "sans", 13, (60, 60, 60))
    screen.box(360, 220, 470, 260, (225, 225, 230))
    screen.text(388, 231, "Cancel", "sans", 14, (20, 20, 20))
    screen.box(490, 220, 600, 260, (200, 40, 40))
    screen.text(519, 231, "Delete", "sans", 14, (255, 255, 255))
    return screen


def settings_window() -> Screen:
    """A 1280×720 window with icons, a photo and a bar chart around a few lines of text."""
    rng = np.random.default_rng(7)
    screen = Screen(1280, 720, (248, 248, 248))
    noise = (rng.random((90, 160, 3)) * 255).astype(np.uint8)
    photo = Image.fromarray(noise).resize((480, 270), Image.Resampling.BICUBIC)
    screen.image.paste(photo.filter(ImageFilter.GaussianBlur(6)), (700, 60))
    draw = screen.draw
    for index in range(8):  # toolbar icons
        x = 40 + index * 48
        if index % 3 == 2:
            draw.polygon([(x, 48), (x + 14, 20), (x + 28, 48)], outline=(60, 60, 60), width=3)
        else:
            shape = draw.ellipse if index % 3 == 0 else draw.rectangle
            shape([x, 20, x + 28, 48], outline=(60, 60, 60), width=3)
    for index in range(5):  # a list of checkboxes
        draw.rectangle([40, 100 + index * 36, 58, 118 + index * 36], outline=(80, 80, 80), width=2)
        screen.text(72, 100 + index * 36, f"Option number {index + 1} enabled", "sans", 14, (30, 30, 30))
    draw.rounded_rectangle([40, 320, 200, 360], radius=8, fill=(40, 110, 220))
    screen.text(80, 331, "Save all", "sans", 14, (255, 255, 255))
    for index, height in enumerate(rng.integers(20, 150, 12)):  # a bar chart
        draw.rectangle([700 + index * 36, 600 - int(height), 724 + index * 36, 600], fill=(90, 140, 200))
    return screen


def normalised(text: str) -> str:
    """Case and spacing are not OCR's to get right: 'English (Us)' reads the same to a language model, and
    the space a monospace font puts around ':' is ambiguous even to a person."""
    return " ".join(text.casefold().split())


def missing(known: list[Known], screen_text: ScreenText) -> list[str]:
    found = normalised(" ".join(line.text for line in screen_text.lines))
    return [k.text for k in known if normalised(k.text) not in found]


def word_position(text: str, known: str) -> int:
    """Where `known` starts in normalised `text` as whole words ('View' is not the one inside 'review')."""
    found = re.search(r"(?<!\w)" + re.escape(normalised(known)) + r"(?!\w)", text)
    assert found, f"{known!r} not found in:\n{text}"
    return found.start()


def line_with(screen_text: ScreenText, text: str) -> int:
    wanted = normalised(text)
    for index, line in enumerate(screen_text.lines):
        if wanted in normalised(line.text):
            return index
    raise AssertionError(f"{text!r} not found in:\n{screen_text.render(100_000)}")


def print_timing(label: str, result: ScreenText) -> None:
    stages = ", ".join(f"{stage} {ms:.0f}" for stage, ms in result.stage_ms.items())
    print(f"\n{label}: {result.width}×{result.height} in {result.elapsed_ms:.0f} ms ({stages}); "
          f"{len(result.lines)} lines")


# --- fixtures: one reader, each screen read once -----------------------------------------------------


@pytest.fixture(scope="module")
def reader(model_store) -> ScreenReader:
    started = time.perf_counter()
    screen_reader = ScreenReader(model_store.resolve("ppocr-v6-small"), threads=1)
    screen_reader.warm_up()
    print(f"\nload + warm-up: {(time.perf_counter() - started) * 1000:.0f} ms")
    return screen_reader


@pytest.fixture(scope="module")
def office() -> Screen:
    return office_screen()


@pytest.fixture(scope="module")
def office_read(reader, office) -> ScreenText:
    result = reader.read(office.encoded("PNG"))
    print_timing("office 1080p PNG, 1 thread", result)
    print(result.text)
    return result


@pytest.fixture(scope="module")
def chat() -> Screen:
    return chat_screen()


@pytest.fixture(scope="module")
def chat_read(reader, chat) -> ScreenText:
    result = reader.read(chat.encoded("WEBP", lossless=True))
    print_timing("dark chat 1080p WebP, 1 thread", result)
    print(result.text)
    return result


# --- what is read -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_light_screen_every_string_is_read(office, office_read):
    assert office_read.width == 1920 and office_read.height == 1080
    assert missing(office.known, office_read) == []


@pytest.mark.slow
def test_dark_screen_every_string_is_read(chat, chat_read):
    assert (chat_read.width, chat_read.height) == (1920, 1080)
    assert missing(chat.known, chat_read) == []


@pytest.mark.slow
def test_terminal_lines_are_read_one_per_line(office, office_read):
    commands = (
        "$ git status", "On branch main", "modified:   engine/server.py",
        "42 passed, 1 failed in 3.27s",
    )
    rows = [line_with(office_read, text) for text in commands]
    assert rows == sorted(rows) and len(set(rows)) == len(rows)
    assert normalised(office_read.lines[rows[-1]].text) == "42 passed, 1 failed in 3.27s"


@pytest.mark.slow
def test_reading_order_is_top_to_bottom_then_left_to_right(office, office_read):
    text = normalised(office_read.render(100_000))
    position = {k.text: word_position(text, k.text) for k in office.known}
    pairs = 0
    for first in office.known:
        for second in office.known:
            wholly_above = first.bottom < second.top
            left_on_same_row = first.y == second.y and first.x < second.x
            if wholly_above or left_on_same_row:
                assert position[first.text] < position[second.text], (first.text, second.text)
                pairs += 1
    assert pairs > 400


@pytest.mark.slow
def test_a_column_gap_is_written_as_a_separator(office_read, chat_read):
    assert normalised(office_read.lines[line_with(office_read, "Total due")].text) == "total due | $1,249.50"
    invoice = office_read.lines[line_with(office_read, "INV-20931")]
    assert normalised(invoice.text) == "invoice number | inv-20931"
    title = office_read.lines[line_with(office_read, "Quarterly Report.odt")]
    assert normalised(title.text) == "quarterly report.odt - writer | wed 14:05"
    assert title.left < 20 and title.right > 1800  # a line spans its row
    author = normalised(chat_read.lines[line_with(chat_read, "Lena Fischer")].text)
    assert author == "lena fischer | 10:02 am"
    # words of one sentence are never split by a separator
    sentence = chat_read.lines[line_with(chat_read, "QA found one blocker")].text
    assert " | " not in sentence


@pytest.mark.slow
def test_lines_are_ordered_and_placed(office_read):
    tops = [line.top for line in office_read.lines]
    assert tops == sorted(tops)
    for line in office_read.lines:
        assert 0 <= line.left < line.right <= 1920 and 0 <= line.top < line.bottom <= 1080


@pytest.mark.slow
def test_window_region_as_jpeg_data_url_and_as_pixels(reader):
    dialog = dialog_region()
    url = "data:image/jpeg;base64," + base64.b64encode(dialog.encoded("JPEG", quality=90)).decode()
    from_url = reader.read(url)
    print_timing("640×300 dialog, JPEG data URL", from_url)
    print(from_url.text)
    assert (from_url.width, from_url.height) == (640, 300)
    assert missing(dialog.known, from_url) == []
    assert normalised(from_url.lines[-1].text) == "cancel | delete"

    from_pixels = reader.read(np.asarray(dialog.image))
    assert missing(dialog.known, from_pixels) == []


@pytest.mark.slow
def test_icons_a_photo_and_a_chart_add_no_lines(reader):
    window = settings_window()
    result = reader.read(window.encoded())
    print_timing("1280×720 window with a photo and icons", result)
    print(result.text)
    assert [normalised(line.text) for line in result.lines] == [normalised(k.text) for k in window.known]


@pytest.mark.slow
def test_cjk_reading_reads_latin_text_the_same(model_store):
    dialog = dialog_region()
    full_alphabet = ScreenReader(model_store.resolve("ppocr-v6-small"), threads=1, cjk=True)
    result = full_alphabet.read(dialog.encoded())
    print_timing("640×300 dialog, CJK alphabet kept", result)
    assert missing(dialog.known, result) == []


@pytest.mark.slow
def test_cached_reread_of_the_same_screen_gives_the_same_lines(reader, office, office_read):
    again = reader.read(office.encoded("PNG"))
    print_timing("office again (recognition cached)", again)
    assert [line.text for line in again.lines] == [line.text for line in office_read.lines]


@pytest.mark.slow
def test_a_spent_time_budget_leaves_regions_unread_and_says_so(reader):
    screen = Screen(800, 200, (255, 255, 255))
    screen.text(20, 20, "Budget check line one", "sans", 16, (0, 0, 0))
    screen.text(20, 80, "Budget check line two", "sans", 16, (0, 0, 0))
    result = reader.read(screen.encoded(), budget_ms=0)
    assert result.unread_regions >= 2 and result.lines == ()
    assert "not read" in result.text and "out of time" in result.text


@pytest.mark.slow
def test_full_frame_timings_against_the_stock_pipeline(model_store, office, office_read):
    """Prints the stock RapidOCR pipeline's stages next to ours on the same screen, one thread each,
    and checks that the faster path reads everything the stock one does."""
    model = model_store.resolve("ppocr-v6-small")
    stock = RapidOCR(params={
        "Global.log_level": "warning",
        "Det.model_path": str(model.file("PP-OCRv6_det_small.onnx")),
        "Rec.model_path": str(model.file("PP-OCRv6_rec_small.onnx")),
        "Cls.model_path": str(model.file("ch_ppocr_mobile_v2.0_cls_mobile.onnx")),
        "EngineConfig.onnxruntime.intra_op_num_threads": 1,
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
    })
    bgr = np.ascontiguousarray(np.asarray(office.image)[:, :, ::-1])
    stock(bgr[:200, :400])  # load the models outside the timing
    started = time.perf_counter()
    result = stock(bgr)
    total = (time.perf_counter() - started) * 1000
    detect, classify, recognize = (seconds * 1000 for seconds in result.elapse_list)
    print(f"\nstock RapidOCR 1080p, 1 thread: {total:.0f} ms "
          f"(detect {detect:.0f}, angle classifier {classify:.0f}, recognize {recognize:.0f})")
    print_timing("this reader, same screen", office_read)
    stock_text = normalised(" ".join(result.txts))
    stock_found = {k.text for k in office.known if normalised(k.text) in stock_text}
    assert not stock_found & set(missing(office.known, office_read))


# --- rendering for the prompt ---------------------------------------------------------------------------


def _screen_text(texts: list[str], unread: int = 0) -> ScreenText:
    lines = tuple(ScreenLine(text, 0, 20 * i, 100, 20 * i + 16) for i, text in enumerate(texts))
    return ScreenText(lines=lines, width=1920, height=1080, elapsed_ms=1.0, unread_regions=unread)


def test_render_keeps_whole_first_lines_within_the_bound_and_says_what_was_cut():
    texts = [f"Line {i}: the quick brown fox jumps over the lazy dog" for i in range(100)]
    rendered = _screen_text(texts).render(max_chars=500)
    assert len(rendered) <= 500
    shown = rendered.splitlines()
    assert shown[:-1] == texts[: len(shown) - 1]
    assert shown[-1] == f"[… {100 - (len(shown) - 1)} more lines " \
                        f"({sum(len(t) + 1 for t in texts[len(shown) - 1:]):,} characters) not shown]"


def test_render_drops_symbol_noise_and_keeps_short_screens_whole():
    rendered = _screen_text(["Inbox (3)", "|", "•", "Send", "OK"]).render()
    assert rendered == "Inbox (3)\nSend\nOK"
    assert _screen_text([]).text == "(no text found on the screen)"


def test_render_shortens_a_single_huge_line():
    rendered = _screen_text(["word " * 1000, "next line"]).render(max_chars=300)
    assert len(rendered) <= 300
    first, note = rendered.splitlines()
    assert first.endswith("…") and note == "[… 1 more line (10 characters) not shown]"


# --- images that cannot be read ----------------------------------------------------------------------------


def _png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG header claiming a size, followed by almost no pixel data (a few bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_data_url_round_trip():
    png = dialog_region().encoded()
    assert decode_data_url("data:image/png;base64," + base64.b64encode(png).decode()) == png
    unpadded = base64.b64encode(png).decode().rstrip("=")
    assert decode_data_url("data:image/png;base64," + unpadded) == png


@pytest.mark.parametrize(("url", "code", "words"), [
    ("https://example.com/screen.png", "not_a_data_url", "not sent as an image data URL"),
    ("data:image/png;base64", "not_a_data_url", "no ','"),
    ("data:image/gif;base64,R0lGODlh", "unsupported_type", "must be PNG, JPEG or WebP, not image/gif"),
    ("data:text/plain;base64,aGVsbG8=", "unsupported_type", "not text/plain"),
    ("data:image/png;base64,iVBORw0KGgo$$$not*base64", "bad_base64", "not valid base64"),
    ("data:image/png;base64,", "not_a_data_url", "holds no image data"),
])
def test_bad_data_urls_are_refused_with_a_readable_reason(url, code, words):
    with pytest.raises(ScreenImageError) as raised:
        decode_data_url(url)
    assert raised.value.code == code and words in str(raised.value)


@pytest.mark.slow
def test_bytes_that_are_not_an_image_are_refused(reader):
    with pytest.raises(ScreenImageError) as raised:
        reader.read(b"this is not an image at all")
    assert raised.value.code == "corrupt_image" and "not a readable image" in str(raised.value)

    png = dialog_region().encoded()
    with pytest.raises(ScreenImageError) as raised:
        reader.read(png[: len(png) // 2])  # a transfer cut in half: the header survives, the pixels do not
    assert raised.value.code == "corrupt_image" and "damaged" in str(raised.value)

    gif = io.BytesIO()
    Image.new("RGB", (10, 10)).save(gif, "GIF")
    with pytest.raises(ScreenImageError) as raised:
        decode_image(gif.getvalue())
    assert raised.value.code == "unsupported_type" and "not GIF" in str(raised.value)


@pytest.mark.slow
def test_an_oversized_image_is_refused_before_decoding(reader):
    header = _png_claiming(9000, 6000)  # 54 MP; had it been decoded, it would fail as damaged
    with pytest.raises(ScreenImageError) as raised:
        reader.read(header)
    message = str(raised.value)
    assert raised.value.code == "too_large"
    assert "too large" in message and "9000×6000" in message
    assert f"the limit is {MAX_PIXELS / 1e6:.0f} megapixels" in message

    url = "data:image/png;base64," + base64.b64encode(_png_claiming(100_000, 100_000)).decode()
    with pytest.raises(ScreenImageError, match="too large"):
        reader.read(url)


@pytest.mark.slow
def test_pixel_arrays_of_the_wrong_kind_are_refused(reader):
    with pytest.raises(ScreenImageError, match="8-bit"):
        reader.read(np.zeros((100, 100, 3), np.float32))
    with pytest.raises(ScreenImageError, match="RGB"):
        reader.read(np.zeros((100, 100, 2), np.uint8))
    blank = reader.read(np.full((120, 200), 255, np.uint8))  # grey is fine; nothing to read is fine
    assert blank.lines == () and blank.text == "(no text found on the screen)"
