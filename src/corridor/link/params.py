"""Link parameters: typed, validated, with units in every name.

A link is described by four groups (fibre, source, detector, post-processing
assumption) gathered in :class:`LinkParameters`. Presets reproduce published
set-ups; any field can be overridden by its (unique) name, from the CLI
(``--set attenuation_db_per_km=0.18``) or from a TOML file whose tables mirror the
groups (``[fibre]``, ``[source]``, ``[detector]``, ``[protocol]``) or that sets
fields at top level.

Validation raises :class:`corridor.errors.ParameterError` naming the field, the
value and the allowed range, never a bare traceback.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from corridor.errors import ParameterError
from corridor.tomlfile import read_toml


def _check_range(name: str, value: float, low: float, high: float, *,
                 low_open: bool = False, high_open: bool = False, hint: str | None = None) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise ParameterError(name, value, "must be a number")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        high_text = "inf" if math.isinf(high) else f"{high:g}"
        raise ParameterError(name, value, f"allowed range is {left}{low:g}, {high_text}{right}",
                             hint)


def _check_probability(name: str, value: float) -> None:
    _check_range(name, value, 0.0, 1.0)


@dataclass(frozen=True)
class FibreParameters:
    """The quantum channel: a span of optical fibre.

    Attributes:
        length_km: fibre length in kilometres.
        attenuation_db_per_km: loss coefficient (SMF-28 at 1550 nm: 0.2 dB/km).
        insertion_loss_db: extra fixed loss (connectors, splices, filters) in dB.
    """

    length_km: float = 0.0
    attenuation_db_per_km: float = 0.2
    insertion_loss_db: float = 0.0

    def __post_init__(self) -> None:
        _check_range("length_km", self.length_km, 0.0, 10_000.0,
                     hint="a negative length has no meaning" if self.length_km < 0 else None)
        if self.attenuation_db_per_km > 1.0:
            raise ParameterError(
                "attenuation_db_per_km", self.attenuation_db_per_km,
                "allowed range is [0, 1] dB/km for optical fibre",
                "this looks like dB/m or a probability: standard fibre at 1550 nm is 0.2 dB/km",
            )
        _check_range("attenuation_db_per_km", self.attenuation_db_per_km, 0.0, 1.0)
        _check_range("insertion_loss_db", self.insertion_loss_db, 0.0, 100.0)

    @property
    def loss_db(self) -> float:
        """Total channel loss in dB."""
        return self.attenuation_db_per_km * self.length_km + self.insertion_loss_db

    @property
    def transmittance(self) -> float:
        """eta_ch = 10^(-loss/10)."""
        return float(10.0 ** (-self.loss_db / 10.0))


@dataclass(frozen=True)
class SourceParameters:
    """Alice's weak-coherent-pulse source with decoy states and basis choice.

    Intensities are mean photon numbers per pulse: signal > decoy > vacuum >= 0.
    The three class probabilities must sum to 1. ``z_basis_probability`` is the
    probability of the Z (key) basis for both Alice and Bob: 0.5 is standard BB84,
    larger values give efficient (biased-basis) BB84.
    """

    pulse_rate_hz: float = 1e9
    signal_intensity: float = 0.5
    decoy_intensity: float = 0.1
    vacuum_intensity: float = 0.0
    signal_probability: float = 0.8
    decoy_probability: float = 0.1
    vacuum_probability: float = 0.1
    z_basis_probability: float = 0.5

    def __post_init__(self) -> None:
        _check_range("pulse_rate_hz", self.pulse_rate_hz, 0.0, 1e12, low_open=True)
        _check_range("signal_intensity", self.signal_intensity, 0.0, 100.0, low_open=True,
                     hint=None)
        _check_range("decoy_intensity", self.decoy_intensity, 0.0, 100.0)
        _check_range("vacuum_intensity", self.vacuum_intensity, 0.0, 100.0)
        if self.decoy_intensity >= self.signal_intensity:
            raise ParameterError(
                "decoy_intensity", self.decoy_intensity,
                f"must be below signal_intensity = {self.signal_intensity!r}",
            )
        if self.vacuum_intensity >= self.decoy_intensity:
            raise ParameterError(
                "vacuum_intensity", self.vacuum_intensity,
                f"must be below decoy_intensity = {self.decoy_intensity!r}",
            )
        for name in ("signal_probability", "decoy_probability", "vacuum_probability",
                     "z_basis_probability"):
            _check_probability(name, getattr(self, name))
        total = self.signal_probability + self.decoy_probability + self.vacuum_probability
        if abs(total - 1.0) > 1e-9:
            raise ParameterError(
                "signal_probability + decoy_probability + vacuum_probability", round(total, 12),
                "must sum to 1",
            )
        if self.signal_probability == 0.0:
            raise ParameterError("signal_probability", 0.0, "must be above 0")
        _check_range("z_basis_probability", self.z_basis_probability, 0.0, 1.0,
                     low_open=True, high_open=True,
                     hint="both bases are needed: one for the key, one to test it")

    @property
    def intensities(self) -> tuple[float, float, float]:
        """(signal, decoy, vacuum) mean photon numbers."""
        return (self.signal_intensity, self.decoy_intensity, self.vacuum_intensity)

    @property
    def class_probabilities(self) -> tuple[float, float, float]:
        """(signal, decoy, vacuum) probabilities."""
        return (self.signal_probability, self.decoy_probability, self.vacuum_probability)

    @property
    def efficient_bb84(self) -> bool:
        """True when the bases are biased (efficient BB84)."""
        return self.z_basis_probability != 0.5


@dataclass(frozen=True)
class DetectorParameters:
    """Bob's receiver: two threshold detectors (one per bit value) behind his optics.

    Attributes:
        efficiency: eta_bob, Bob's optical transmittance times detector efficiency.
        dark_count_probability: probability of a dark count per gate, per detector.
        afterpulse_probability: probability that a click is followed by an afterpulse.
        dead_time_s: time a pixel stays blind after a click (non-paralysable). A click
            blinds the pixel of both detectors (the common dead time that closes the
            dead-time attack of Weier et al., New J. Phys. 13, 073024 (2011)).
        detector_pixels: independent pixels per detector (multi-pixel SNSPDs). The
            pixels of the two detectors form ``detector_pixels`` receiver lanes; the
            light of each gate lands on one lane, so a dead lane leaves the others free
            and the receiver saturates ``detector_pixels`` times later (the model is
            spelled out in :func:`corridor.link.rates.detector_availability`).
    """

    efficiency: float = 0.1
    dark_count_probability: float = 1e-6
    afterpulse_probability: float = 0.0
    dead_time_s: float = 0.0
    detector_pixels: int = 1

    def __post_init__(self) -> None:
        _check_range("efficiency", self.efficiency, 0.0, 1.0, low_open=True)
        _check_probability("dark_count_probability", self.dark_count_probability)
        _check_probability("afterpulse_probability", self.afterpulse_probability)
        _check_range("dead_time_s", self.dead_time_s, 0.0, 1.0,
                     hint="dead times are nanoseconds to microseconds" if self.dead_time_s > 1
                     else None)
        pixels: object = self.detector_pixels
        if isinstance(pixels, float) and pixels.is_integer():
            # TOML and --set give numbers as floats: a whole number is a pixel count.
            object.__setattr__(self, "detector_pixels", int(pixels))
            pixels = int(pixels)
        if isinstance(pixels, bool) or not isinstance(pixels, int) or not 1 <= pixels <= 1024:
            raise ParameterError("detector_pixels", pixels,
                                 "must be a whole number of pixels in [1, 1024]")
        if pixels > 1 and self.afterpulse_probability > 0.0:
            raise ParameterError(
                "afterpulse_probability", self.afterpulse_probability,
                "must be 0 with detector_pixels > 1",
                "afterpulses are modelled for single-pixel detectors only")

    @property
    def background_yield(self) -> float:
        """Y0: probability of at least one click with no signal photon (two detectors)."""
        return 1.0 - (1.0 - self.dark_count_probability) ** 2


@dataclass(frozen=True)
class ProtocolParameters:
    """Assumptions of the protocol and its post-processing.

    Attributes:
        misalignment_error: e_d, probability that a signal photon hits the wrong detector.
        reconciliation_efficiency: f >= 1, disclosed bits over the Shannon limit.
        eps_sec: secrecy parameter of the finite-key analysis.
        eps_cor: correctness parameter (verification hash collision).
    """

    misalignment_error: float = 0.01
    reconciliation_efficiency: float = 1.16
    eps_sec: float = 1e-10
    eps_cor: float = 1e-15

    def __post_init__(self) -> None:
        _check_range("misalignment_error", self.misalignment_error, 0.0, 0.5)
        _check_range("reconciliation_efficiency", self.reconciliation_efficiency, 1.0, 10.0,
                     hint="f is disclosed bits over n*H2(QBER) and is never below 1"
                     if self.reconciliation_efficiency < 1 else None)
        _check_range("eps_sec", self.eps_sec, 0.0, 1.0, low_open=True, high_open=True)
        _check_range("eps_cor", self.eps_cor, 0.0, 1.0, low_open=True, high_open=True)


_GROUPS: dict[str, type] = {
    "fibre": FibreParameters,
    "source": SourceParameters,
    "detector": DetectorParameters,
    "protocol": ProtocolParameters,
}


@dataclass(frozen=True)
class LinkParameters:
    """Everything that describes one QKD link."""

    fibre: FibreParameters = field(default_factory=FibreParameters)
    source: SourceParameters = field(default_factory=SourceParameters)
    detector: DetectorParameters = field(default_factory=DetectorParameters)
    protocol: ProtocolParameters = field(default_factory=ProtocolParameters)
    name: str = "custom"

    # Derived quantities used throughout the link and distill layers.
    @property
    def transmittance(self) -> float:
        """eta = eta_ch * eta_bob."""
        return self.fibre.transmittance * self.detector.efficiency

    @property
    def background_yield(self) -> float:
        """Y0 of the two-detector receiver."""
        return self.detector.background_yield

    def with_length(self, length_km: float) -> LinkParameters:
        """The same link at another fibre length."""
        return replace(self, fibre=replace(self.fibre, length_km=float(length_km)))

    def with_intensities(self, signal: float, decoy: float | None = None,
                         vacuum: float | None = None) -> LinkParameters:
        """The same link with other decoy-state intensities."""
        src = self.source
        return replace(self, source=replace(
            src, signal_intensity=float(signal),
            decoy_intensity=src.decoy_intensity if decoy is None else float(decoy),
            vacuum_intensity=src.vacuum_intensity if vacuum is None else float(vacuum)))

    def override(self, values: dict[str, Any]) -> LinkParameters:
        """Override fields by name (``length_km``) or dotted name (``fibre.length_km``).

        Unknown names raise :class:`ParameterError` listing the known ones; the whole
        set is applied at once so that, for example, signal and decoy intensities can
        be changed together without tripping the ordering check half way.
        """
        pending: dict[str, dict[str, Any]] = {group: {} for group in _GROUPS}
        name = self.name
        for key, value in values.items():
            if key == "name":
                name = str(value)
                continue
            group = _group_of(key)
            pending[group][key.split(".")[-1]] = _coerce(key, value)
        kwargs = {group: replace(getattr(self, group), **changes) if changes
                  else getattr(self, group) for group, changes in pending.items()}
        return LinkParameters(name=name, **kwargs)

    def as_dict(self) -> dict[str, Any]:
        """Nested plain-dict form (TOML and JSON friendly)."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Every field by its unique name."""
        out: dict[str, Any] = {}
        for group in _GROUPS:
            out.update(dataclasses.asdict(getattr(self, group)))
        return out


def field_names() -> dict[str, str]:
    """Map of every overridable field name to its group."""
    return {f.name: group for group, cls in _GROUPS.items() for f in fields(cls)}


def _group_of(key: str) -> str:
    names = field_names()
    if "." in key:
        group, _, leaf = key.partition(".")
        if group in _GROUPS and leaf in {f.name for f in fields(_GROUPS[group])}:
            return group
    elif key in names:
        return names[key]
    raise ParameterError("parameter name", key,
                         "must be one of " + ", ".join(sorted(names)))


def _coerce(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ParameterError(key, value, "must be a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ParameterError(key, value, "must be a number") from None


PRESETS: dict[str, LinkParameters] = {
    # Lo, Ma, Chen, PRL 94, 230504 (2005), parameters of Gobby-Yuan-Shields (2004).
    "gys-2004": LinkParameters(
        name="gys-2004",
        fibre=FibreParameters(attenuation_db_per_km=0.21),
        source=SourceParameters(pulse_rate_hz=2e6, signal_intensity=0.48, decoy_intensity=0.1,
                                vacuum_intensity=0.0, signal_probability=0.8,
                                decoy_probability=0.1, vacuum_probability=0.1,
                                z_basis_probability=0.5),
        detector=DetectorParameters(efficiency=0.045, dark_count_probability=8.5e-7),
        protocol=ProtocolParameters(misalignment_error=0.033, reconciliation_efficiency=1.22),
    ),
    # A present-day link: SNSPDs, efficient BB84, 1 GHz clock. Dead time 50 ns: a
    # single-meander SNSPD recovers in tens of ns (its reset time L_k / R_load; Marsili
    # et al., Nat. Photon. 7, 210 (2013): ~40 ns for a 93 %-efficiency WSi meander), and
    # vendors quote dead times of 20-100 ns for QKD-grade single-pixel SNSPDs.
    "modern-snspd": LinkParameters(
        name="modern-snspd",
        fibre=FibreParameters(attenuation_db_per_km=0.2),
        source=SourceParameters(pulse_rate_hz=1e9, signal_intensity=0.5, decoy_intensity=0.15,
                                vacuum_intensity=0.0, signal_probability=0.7,
                                decoy_probability=0.2, vacuum_probability=0.1,
                                z_basis_probability=0.9),
        detector=DetectorParameters(efficiency=0.6, dark_count_probability=5e-8,
                                    dead_time_s=50e-9, detector_pixels=1),
        protocol=ProtocolParameters(misalignment_error=0.01, reconciliation_efficiency=1.16),
    ),
    # Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014), Sec. IV, dedicated fibre
    # (their Fig. 1): InGaAs APDs with eta_Bob 10 %, p_dc 6e-7, p_ap 4 %; e_mis 0.5 %;
    # f_EC 1.16; eps_cor 1e-15; vacuum-like third intensity 2e-4; 0.2 dB/km. The paper
    # optimises mu1, mu2, q_x, p_mu1, p_mu2 per point (the values here only start the
    # search) and sets eps_sec = 1e-15 * l, which a fixed field cannot hold: 1e-10 is
    # Corridor's default, and optimise_key_block(secrecy_per_key_bit=1e-15) applies
    # their scaling. The paper states no clock rate; 1e9 Hz only scales bits/s.
    "lim-2014": LinkParameters(
        name="lim-2014",
        fibre=FibreParameters(attenuation_db_per_km=0.2),
        source=SourceParameters(pulse_rate_hz=1e9, signal_intensity=0.5, decoy_intensity=0.1,
                                vacuum_intensity=2e-4, signal_probability=0.7,
                                decoy_probability=0.2, vacuum_probability=0.1,
                                z_basis_probability=0.8),
        detector=DetectorParameters(efficiency=0.1, dark_count_probability=6e-7,
                                    afterpulse_probability=0.04),
        protocol=ProtocolParameters(misalignment_error=0.005, reconciliation_efficiency=1.16,
                                    eps_sec=1e-10, eps_cor=1e-15),
    ),
    # The 10 km record set-up of Grünenfelder et al., Nat. Photon. 17, 422 (2023):
    # 2.5 GHz clock, one-decoy time-bin QKD, multi-pixel SNSPDs, 64 Mb/s at 10.0 km.
    # From the paper: pulse rate, distance, one decoy. Pixels: 14, the array of the same
    # group (Resta et al., Nano Lett. 23, 6018 (2023): 14 independent pixels, 90 %
    # efficiency, halved at 1.5 G detections per second, which our lane model gives for
    # a 10 ns dead time per pixel). Assumed, not from the paper: efficiency 0.45
    # (detector ~0.65 under load times ~0.7 receiver optics), misalignment 1.5 %,
    # intensities and probabilities typical of the group's one-decoy settings.
    "grunenfelder-2023": LinkParameters(
        name="grunenfelder-2023",
        fibre=FibreParameters(length_km=10.0, attenuation_db_per_km=0.2),
        source=SourceParameters(pulse_rate_hz=2.5e9, signal_intensity=0.5,
                                decoy_intensity=0.15, vacuum_intensity=0.0,
                                signal_probability=0.7, decoy_probability=0.3,
                                vacuum_probability=0.0, z_basis_probability=0.9),
        detector=DetectorParameters(efficiency=0.45, dark_count_probability=1e-8,
                                    dead_time_s=10e-9, detector_pixels=14),
        protocol=ProtocolParameters(misalignment_error=0.015, reconciliation_efficiency=1.1,
                                    eps_sec=1e-9, eps_cor=1e-15),
    ),
    # Boaron et al., PRL 121, 190502 (2018): 2.5 GHz, one-decoy finite key (Rusca et
    # al. 2018, corridor.link.finite_key_one_decoy), ultra-low-loss fibre, low-noise
    # SNSPDs; 6.5 bit/s over 405 km, keys up to 421 km (the abstract). From the paper:
    # pulse rate, one decoy, distances and rate; eps_sec 1e-9 and eps_cor 1e-15 are
    # those of Rusca et al. Assumed (the paper's tables were not at hand):
    # 0.17 dB/km fibre, Bob's efficiency 0.3, 1e-10 dark counts per gate (0.1-1 cps in a
    # ~100 ps window), misalignment 0.5 %, the intensities and probabilities below.
    "boaron-2018": LinkParameters(
        name="boaron-2018",
        fibre=FibreParameters(length_km=405.0, attenuation_db_per_km=0.17),
        source=SourceParameters(pulse_rate_hz=2.5e9, signal_intensity=0.5,
                                decoy_intensity=0.15, vacuum_intensity=0.0,
                                signal_probability=0.7, decoy_probability=0.3,
                                vacuum_probability=0.0, z_basis_probability=0.85),
        detector=DetectorParameters(efficiency=0.3, dark_count_probability=1e-10,
                                    dead_time_s=50e-9, detector_pixels=1),
        protocol=ProtocolParameters(misalignment_error=0.005, reconciliation_efficiency=1.1,
                                    eps_sec=1e-9, eps_cor=1e-15),
    ),
}


def preset(name: str) -> LinkParameters:
    """A preset by name; unknown names list the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ParameterError("preset", name, "must be one of " + ", ".join(sorted(PRESETS))) \
            from None


def load_toml(path: str | Path, base: LinkParameters | None = None) -> LinkParameters:
    """Read overrides from a TOML file onto ``base`` (or onto the file's ``preset`` key).

    The file may set ``preset = "gys-2004"``, fields at top level, or fields inside
    ``[fibre]``, ``[source]``, ``[detector]`` and ``[protocol]`` tables.
    """
    data = read_toml(path, "--config")
    if "preset" in data:
        base = preset(str(data.pop("preset")))
    params = base if base is not None else PRESETS["modern-snspd"]
    values: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in _GROUPS:
                raise ParameterError("TOML table", key,
                                     "must be one of " + ", ".join(sorted(_GROUPS)))
            values.update({f"{key}.{leaf}": v for leaf, v in value.items()})
        else:
            values[key] = value
    return params.override(values)
