/*
 * Corridor's command-line driver around the ETSI TS 103 744 informative reference
 * implementation (etsi-forge/cyber.103744_QHKEX, qshkex.c), used only to produce
 * tests/hybrid/data/etsi103744_vectors.json. This file is ours; qshkex.c/qshkex.h are
 * NOT part of Corridor: make_etsi103744_vectors.py compiles them from a checkout.
 *
 *   driver cat sha256|sha384 LENGTH PSK K1 K2 MA MB INFO LABEL   -> KEYHEX
 *   driver cas sha256|sha384 CHAINLEN LENGTH PREV K MA MB INFO LABEL -> CHAINHEX KEYHEX
 * Every byte string is hex ("" for empty).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "qshkex.h"

static uint8_t *unhex(const char *text, uint32_t *length)
{
    size_t n = strlen(text);
    uint8_t *out = malloc(n / 2 + 1); /* never NULL for empty input: the reference
                                         rejects NULL for MA, MB and k */
    if (out == NULL || n % 2) {
        exit(3);
    }
    for (size_t i = 0; i < n / 2; i++) {
        unsigned int byte;
        if (sscanf(text + 2 * i, "%2x", &byte) != 1) {
            exit(3);
        }
        out[i] = (uint8_t)byte;
    }
    *length = (uint32_t)(n / 2);
    return out;
}

static void put_hex(const uint8_t *data, uint32_t length)
{
    for (uint32_t i = 0; i < length; i++) {
        printf("%02x", data[i]);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        return 2;
    }
    const EVP_MD *md = strcmp(argv[2], "sha384") == 0 ? EVP_sha384() : EVP_sha256();
    uint32_t l[7];
    uint8_t *b[7];
    if (strcmp(argv[1], "cat") == 0 && argc == 11) {
        uint32_t length = (uint32_t)atoi(argv[3]);
        uint8_t out[512];
        for (int i = 0; i < 7; i++) {
            b[i] = unhex(argv[4 + i], &l[i]);
        }
        if (hkex_concat_hkdf(md, out, length, b[0], l[0], b[1], l[1], b[2], l[2], b[3], l[3],
                             b[4], l[4], b[5], l[5], b[6], l[6]) != SUCCESS) {
            return 1;
        }
        put_hex(out, length);
        printf("\n");
        return 0;
    }
    if (strcmp(argv[1], "cas") == 0 && argc == 11) {
        uint32_t chain_length = (uint32_t)atoi(argv[3]);
        uint32_t length = (uint32_t)atoi(argv[4]);
        uint8_t chain[64], out[128];
        for (int i = 0; i < 6; i++) {
            b[i] = unhex(argv[5 + i], &l[i]);
        }
        if (hkex_cascade_hkdf(md, chain, chain_length, out, length, b[0], l[0], b[1], l[1],
                              b[2], l[2], b[3], l[3], b[4], l[4], b[5], l[5]) != SUCCESS) {
            return 1;
        }
        put_hex(chain, chain_length);
        printf(" ");
        put_hex(out, length);
        printf("\n");
        return 0;
    }
    return 2;
}
