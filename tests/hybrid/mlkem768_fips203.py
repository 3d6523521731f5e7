"""Test-only ML-KEM-768 derandomised encapsulation, written from FIPS 203.

pyca/cryptography exposes ML-KEM keygen from a seed and decapsulation, but not
``Encaps_internal(ek, m)`` with a caller-chosen ``m``, which the X-Wing vectors need.
This module implements just that path (algorithms 7-11, 14 and 17 of FIPS 203) in
plain Python so that the tests can recompute ``ct`` from ``eseed``. It is slow and not
constant-time: never use it for real keys. Its output is checked against pyca's
decapsulation in test_mlkem768_fips203.py.
"""

from __future__ import annotations

import hashlib

Q = 3329
N = 256
K = 3  # ML-KEM-768
ETA1 = ETA2 = 2
DU, DV = 10, 4


def _bitrev7(i: int) -> int:
    return int(f"{i:07b}"[::-1], 2)


_ZETAS = [pow(17, _bitrev7(i), Q) for i in range(128)]  # NTT twiddles, FIPS 203 (4.19)
_GAMMAS = [pow(17, 2 * _bitrev7(i) + 1, Q) for i in range(128)]  # for MultiplyNTTs


def ntt(f: list[int]) -> list[int]:
    """Algorithm 9."""
    f = list(f)
    i = 1
    length = 128
    while length >= 2:
        for start in range(0, N, 2 * length):
            zeta = _ZETAS[i]
            i += 1
            for j in range(start, start + length):
                t = zeta * f[j + length] % Q
                f[j + length] = (f[j] - t) % Q
                f[j] = (f[j] + t) % Q
        length //= 2
    return f


def ntt_inverse(f: list[int]) -> list[int]:
    """Algorithm 10."""
    f = list(f)
    i = 127
    length = 2
    while length <= 128:
        for start in range(0, N, 2 * length):
            zeta = _ZETAS[i]
            i -= 1
            for j in range(start, start + length):
                t = f[j]
                f[j] = (t + f[j + length]) % Q
                f[j + length] = zeta * (f[j + length] - t) % Q
        length *= 2
    return [x * 3303 % Q for x in f]  # 3303 = 128^-1 mod q


def multiply_ntts(f: list[int], g: list[int]) -> list[int]:
    """Algorithms 11 and 12."""
    h = [0] * N
    for i in range(128):
        a0, a1, b0, b1 = f[2 * i], f[2 * i + 1], g[2 * i], g[2 * i + 1]
        h[2 * i] = (a0 * b0 + a1 * b1 * _GAMMAS[i]) % Q
        h[2 * i + 1] = (a0 * b1 + a1 * b0) % Q
    return h


def sample_ntt(seed: bytes) -> list[int]:
    """Algorithm 7: rejection sampling from SHAKE128(rho || j || i)."""
    size = 840
    while True:
        stream = hashlib.shake_128(seed).digest(size)
        out: list[int] = []
        for pos in range(0, size - 2, 3):
            c0, c1, c2 = stream[pos], stream[pos + 1], stream[pos + 2]
            for d in (c0 + 256 * (c1 % 16), c1 // 16 + 16 * c2):
                if d < Q and len(out) < N:
                    out.append(d)
            if len(out) == N:
                return out
        size *= 2  # a prefix of a longer SHAKE output is the shorter output


def sample_cbd(data: bytes, eta: int) -> list[int]:
    """Algorithm 8."""
    bits = int.from_bytes(data, "little")
    out = []
    for i in range(N):
        x = sum((bits >> (2 * i * eta + j)) & 1 for j in range(eta))
        y = sum((bits >> (2 * i * eta + eta + j)) & 1 for j in range(eta))
        out.append((x - y) % Q)
    return out


def _prf(s: bytes, b: int, eta: int) -> bytes:
    return hashlib.shake_256(s + bytes([b])).digest(64 * eta)


def byte_encode(f: list[int], d: int) -> bytes:
    """Algorithm 5: d bits per coefficient, least significant bit first."""
    value = 0
    for i, x in enumerate(f):
        value |= x << (d * i)
    return value.to_bytes(32 * d, "little")


def byte_decode(data: bytes, d: int) -> list[int]:
    """Algorithm 6 (coefficients of ByteDecode_12 reduced mod q)."""
    value = int.from_bytes(data, "little")
    mask = (1 << d) - 1
    out = [(value >> (d * i)) & mask for i in range(N)]
    return [x % Q for x in out] if d == 12 else out


def compress(x: int, d: int) -> int:
    # round(2^d * x / q) mod 2^d; q is odd so there are no ties.
    return ((x << (d + 1)) + Q) // (2 * Q) % (1 << d)


def decompress(y: int, d: int) -> int:
    return (Q * y + (1 << (d - 1))) >> d


def kpke_encrypt(ek: bytes, m: bytes, r: bytes) -> bytes:
    """Algorithm 14 (K-PKE.Encrypt) for k = 3."""
    t_hat = [byte_decode(ek[384 * i:384 * (i + 1)], 12) for i in range(K)]
    rho = ek[384 * K:]
    a_hat = [[sample_ntt(rho + bytes([j, i])) for j in range(K)] for i in range(K)]
    counter = 0
    y = []
    for _ in range(K):
        y.append(sample_cbd(_prf(r, counter, ETA1), ETA1))
        counter += 1
    e1 = []
    for _ in range(K):
        e1.append(sample_cbd(_prf(r, counter, ETA2), ETA2))
        counter += 1
    e2 = sample_cbd(_prf(r, counter, ETA2), ETA2)
    y_hat = [ntt(p) for p in y]
    u = []
    for i in range(K):
        acc = [0] * N
        for j in range(K):  # (A_hat transposed) o y_hat
            acc = [(a + b) % Q for a, b in zip(acc, multiply_ntts(a_hat[j][i], y_hat[j]),
                                              strict=True)]
        u.append([(a + b) % Q for a, b in zip(ntt_inverse(acc), e1[i], strict=True)])
    mu = [decompress(bit, 1) for bit in byte_decode(m, 1)]
    acc = [0] * N
    for j in range(K):
        acc = [(a + b) % Q for a, b in zip(acc, multiply_ntts(t_hat[j], y_hat[j]),
                                          strict=True)]
    v = [(a + b + c) % Q for a, b, c in zip(ntt_inverse(acc), e2, mu, strict=True)]
    c1 = b"".join(byte_encode([compress(x, DU) for x in p], DU) for p in u)
    c2 = byte_encode([compress(x, DV) for x in v], DV)
    return c1 + c2


def encaps_derand(ek: bytes, m: bytes) -> tuple[bytes, bytes]:
    """Algorithm 17 (ML-KEM.Encaps_internal): ``(K, c)`` from ``ek`` and ``m``."""
    if len(ek) != 384 * K + 32 or len(m) != 32:
        raise ValueError("ek must be 1184 bytes and m 32 bytes")
    g = hashlib.sha3_512(m + hashlib.sha3_256(ek).digest()).digest()
    shared, r = g[:32], g[32:]
    return shared, kpke_encrypt(ek, m, r)
