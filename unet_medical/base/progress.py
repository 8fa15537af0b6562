"""Progress of a long loop (training steps, images, tiles, calibration tiles, study variants): k/N,
rate and ETA.

On a terminal (stdout is a tty) the loop gets a tqdm bar; elsewhere (log files, CI, pipes) it gets
DLLogger lines such as

    DLL 2026-11-22T23:10:00.123+00:00 - step 25 | progress: 25/600 | loss: 0.43 | rate: 2.5 step/s | eta: 0:03:50

either when the loop asks for one (`log`, the training loop's --log_every cadence) or, for loops that
have no cadence of their own (inference), at most every `interval_s` seconds. Only rank 0 shows
progress: pass `enabled=dist.is_chief`, and a Logger of another rank (which has no backends) disables
it too.

    with Progress(len(images), "predict", logger, unit="img") as progress:
        for image in images:
            ...
            progress.update()

The log side never needs tqdm; the bar side imports it only when a bar is drawn.
"""
from __future__ import annotations

import datetime
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, TextIO, TypeVar

T = TypeVar("T")

DEFAULT_INTERVAL_S = 10.0

# Bars currently drawn; while one is, lines go through tqdm.write so they appear above the bar
# instead of being written into it.
_live_bars = 0


def write_line(text: str) -> None:
    """Print one line on stdout without breaking a progress bar that is being drawn there."""
    if _live_bars:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stdout)
        sys.stdout.flush()
    else:
        print(text, file=sys.stdout, flush=True)


def rate_per_s(done: int, elapsed_s: float) -> float | None:
    """Items per second, or None before any time has passed."""
    return done / elapsed_s if elapsed_s > 0 and done > 0 else None


def eta_seconds(done: int, total: int, rate: float | None) -> float | None:
    """Seconds to finish the remaining total - done items at `rate` items/s (None: not known yet)."""
    if rate is None or rate <= 0:
        return None
    return max(0, total - done) / rate


def format_duration(seconds: float | None) -> str:
    """H:MM:SS (whole seconds, days roll into hours), '?' when unknown."""
    if seconds is None:
        return "?"
    return str(datetime.timedelta(seconds=round(seconds))).replace(" days, ", "d ").replace(" day, ", "d ")


def format_rate(rate: float | None, unit: str) -> str:
    """'2.5 step/s' for fast loops, '312 s/variant' for slow ones (as tqdm shows it), '?' unknown."""
    if rate is None:
        return "?"
    return f"{rate:.3g} {unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{unit}"


class Progress:
    """k/N, rate and ETA of one loop, as a bar (terminal) or log lines (anything else).

    The rate is measured from the end of the first update, so the first item (tf.function tracing,
    first-call allocation) does not skew the ETA; until a second update it is measured from the start.

    Args:
        total: N, the number of items the loop will have done at its end.
        label: the bar's title and the log record's step (unless `integer_steps`).
        logger: a dllogger.Logger (anything with `log(step, data)` and `enabled`), or None: no lines.
        unit: what one item is ("step", "img", "tile", "variant").
        initial: items already done before this process started (a resumed training run).
        interval_s: without a bar, log a line when this many seconds passed since the last one (and a
            last line at the end if any was logged); None: only when `log` is called.
        integer_steps: the record's step is the item count k (training steps) rather than `label`.
        enabled: False shows nothing (ranks other than 0).
        bar: draw a tqdm bar; None: when stdout is a terminal.
        leave: keep the bar on screen when done (never for a bar drawn while another one is).
        clock: seconds, monotonic (tests pass a fake one).
        stream: where the bar is drawn (default stdout).
    """

    def __init__(self, total: int, label: str, logger: Any = None, *, unit: str = "it", initial: int = 0,
                 interval_s: float | None = DEFAULT_INTERVAL_S, integer_steps: bool = False,
                 enabled: bool = True, bar: bool | None = None, leave: bool = True,
                 clock: Callable[[], float] = time.monotonic, stream: TextIO | None = None):
        self.total, self.label, self.unit = int(total), label, unit
        self.done = self._initial = int(initial)
        self.interval_s, self.integer_steps = interval_s, integer_steps
        self.enabled = enabled and (logger is None or getattr(logger, "enabled", True))
        self._logger = logger if self.enabled else None
        self._clock = clock
        self._start = self._last_line = clock()
        self._first: tuple[float, int] | None = None  # (time, count) at the end of the first update
        self._logged_at: int | None = None  # the count at the last logged line
        self._bar = None
        if self.enabled and (sys.stdout.isatty() if bar is None else bar):
            self._open_bar(stream or sys.stdout, leave)

    def _open_bar(self, stream: TextIO, leave: bool) -> None:
        global _live_bars
        from tqdm import tqdm

        # A bar drawn below another one (evaluation inside training, tiles inside images) disappears
        # when done: the outer loop's bar and log lines are what stays on screen.
        self._bar = tqdm(total=self.total, initial=self._initial, desc=self.label, unit=self.unit, file=stream,
                         leave=leave and not _live_bars, dynamic_ncols=True)
        _live_bars += 1

    # ------------------------------------------------------------------------------------ arithmetic
    def rate(self) -> float | None:
        """Items per second in this process (the first item excluded once there is a second)."""
        now = self._clock()
        if self._first is not None and self.done > self._first[1]:
            return rate_per_s(self.done - self._first[1], now - self._first[0])
        return rate_per_s(self.done - self._initial, now - self._start)

    def eta(self) -> float | None:
        """Seconds until `total` at the current rate (None: not known yet)."""
        return eta_seconds(self.done, self.total, self.rate())

    def fields(self) -> dict[str, str]:
        """What a log line adds to the loop's own metrics: progress 'k/N', rate and eta."""
        rate = self.rate()
        return {"progress": f"{self.done}/{self.total}", "rate": format_rate(rate, self.unit),
                "eta": format_duration(eta_seconds(self.done, self.total, rate))}

    def set_total(self, total: int) -> None:
        """N changed (a --time_budget run fixes its number of steps once its step time is measured)."""
        self.total = int(total)
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    # ------------------------------------------------------------------------------------ the loop's calls
    def update(self, n: int = 1, **metrics: Any) -> None:
        """n more items done; `metrics` (loss, ...) are shown on the bar. Logs a line if one is due."""
        if not self.enabled:
            return
        self.done += n
        if self._first is None:
            self._first = (self._clock(), self.done)
        if self._bar is not None:
            if metrics:
                self._bar.set_postfix(_short(metrics), refresh=False)
            self._bar.update(n)
        elif self.interval_s is not None and self._clock() - self._last_line >= self.interval_s:
            self.log(**metrics)

    def log(self, **metrics: Any) -> None:
        """Log one record now: {progress, **metrics, rate, eta} at step k (`integer_steps`) or `label`."""
        if not self.enabled:
            return
        if self._bar is not None and metrics:
            self._bar.set_postfix(_short(metrics))
        self._last_line, self._logged_at = self._clock(), self.done
        if self._logger is not None:
            fields = self.fields()
            data = {"progress": fields["progress"], **metrics, "rate": fields["rate"], "eta": fields["eta"]}
            self._logger.log(self.done if self.integer_steps else self.label, data)

    def track(self, items: Iterable[T]) -> Iterator[T]:
        """Yield `items`, counting each one done when the consumer asks for the next."""
        for item in items:
            yield item
            self.update()

    def close(self) -> None:
        """Remove (or leave) the bar; without one, log a last line if interval lines were logged."""
        global _live_bars
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            _live_bars -= 1
        elif self.enabled and self.interval_s is not None and self._logged_at not in (None, self.done):
            self.log()
        self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _short(metrics: Mapping[str, Any]) -> dict[str, str]:
    return {k: format(v, ".4g") if isinstance(v, float) else str(v) for k, v in metrics.items()}
