/*
 * eg_bpe.h — BPE tokenizers that reproduce Hugging Face `tokenizers` (and
 * llama.cpp) id for id:
 *
 *   byte-level BPE (GPT-2 family; GGUF tokenizer.ggml.model = "gpt2"):
 *     added/special tokens matched as whole strings, a pre-tokenizer (one of
 *     the regexes llama.cpp selects by tokenizer.ggml.pre, written as C
 *     scanners), the GPT-2 byte-to-unicode mapping, merges by rank;
 *   SentencePiece-style BPE (Llama-2; tokenizer.ggml.model = "llama"):
 *     spaces as U+2581, a dummy prefix, merges by the merged token's score,
 *     <0xXX> byte fallback.
 *
 * See csrc/text/bpe.c for the algorithms and docs/TOKENIZERS.md for what is
 * supported.
 */
#ifndef EG_BPE_H
#define EG_BPE_H

#include "eg.h"
#include "eg_gguf.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    EG_BPE_BYTELEVEL = 1, /* GGUF "gpt2"  */
    EG_BPE_SPM = 2,       /* GGUF "llama" */
} eg_bpe_kind;

/* Pre-tokenizers of byte-level BPE (the regex each stands for is in bpe.c). */
typedef enum {
    EG_BPE_PRE_GPT2 = 1,   /* "gpt-2": 's|'t|...| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
    EG_BPE_PRE_LLAMA3 = 2, /* "llama-bpe": (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|...     */
    EG_BPE_PRE_QWEN2 = 3,  /* "qwen2": as LLAMA3 with \p{N} (single digits)                        */
    EG_BPE_PRE_SMOLLM = 4, /* "smollm", "starcoder": every \p{N} isolated, then GPT2               */
} eg_bpe_pre;

/* GGUF tokenizer.ggml.token_type values. CONTROL, USER_DEFINED and UNKNOWN
 * tokens are matched as whole strings in the raw text before anything else
 * (llama.cpp's special tokens; HF's added tokens). */
enum {
    EG_TOKTYPE_NORMAL = 1,
    EG_TOKTYPE_UNKNOWN = 2,
    EG_TOKTYPE_CONTROL = 3,
    EG_TOKTYPE_USER_DEFINED = 4,
    EG_TOKTYPE_UNUSED = 5,
    EG_TOKTYPE_BYTE = 6,
};

typedef struct {
    int kind;              /* eg_bpe_kind                                      */
    int pre;               /* eg_bpe_pre (byte-level only)                     */
    int ignore_merges;     /* byte-level: a pre-token that is a vocabulary
                              token is emitted whole (HF ignore_merges; Llama-3) */
    int add_space_prefix;  /* SPM: prepend U+2581 to text that starts the input
                              or follows a special token                       */
    int32_t bos_id;        /* -1: none                                         */
    int32_t eos_id;        /* -1: none                                         */
    int32_t unk_id;        /* -1: none                                         */
    int32_t pad_id;        /* -1: none; never emitted, for the caller's batches */
    int byte_unk;          /* byte-level: a byte whose character is not a token
                              becomes unk_id (HF with model.unk_token); 0 drops
                              it (HF without unk_token, llama.cpp)             */
    int add_bos;           /* encode with add_special prepends bos_id          */
    int add_eos;           /* ... and appends eos_id                           */
    const char *what;      /* names the source in messages (a file name); NULL ok */
    const char *tokens_field; /* e.g. "tokenizer.ggml.tokens" (NULL: that)     */
    const char *merges_field; /* e.g. "tokenizer.ggml.merges"                  */
} eg_bpe_config;

typedef struct eg_bpe eg_bpe;

/* Build a tokenizer. tokens[i] (tok_lens[i] bytes, valid UTF-8, not empty)
 * is the token with id i; every token must be distinct. types[i] is its
 * EG_TOKTYPE_* (NULL: all NORMAL). scores[i] (SPM: required, finite) is the
 * merge priority of token i (higher first). merges[j] (byte-level: required)
 * is "LEFT RIGHT" (split at the first space after the first byte), rank j;
 * LEFT, RIGHT and LEFT+RIGHT must all be tokens; a repeated merge keeps its
 * later rank, as HF does. Returns EG_EINVAL (or EG_ECORRUPT for a malformed
 * vocabulary) with a message naming cfg->what, the field and the index;
 * EG_ENOMEM. */
eg_status eg_bpe_create(eg_bpe **out, const eg_bpe_config *cfg, const char *const *tokens,
                        const size_t *tok_lens, size_t n_tokens, const int32_t *types,
                        const float *scores, const char *const *merges, const size_t *merge_lens,
                        size_t n_merges, eg_err *err);

/* Build the tokenizer a GGUF file describes (tokenizer.ggml.* metadata:
 * model, pre, tokens, token_type, scores, merges, bos/eos/unknown/padding_token_id,
 * add_bos_token, add_eos_token, add_space_prefix; defaults as llama.cpp).
 * Errors name the file and the key. */
eg_status eg_bpe_from_gguf(eg_bpe **out, const eg_gguf_file *f, eg_err *err);

void eg_bpe_free(eg_bpe *b);

/* The settings in use (kind, pre, ids, flags; `what` and fields are NULL). */
const eg_bpe_config *eg_bpe_get_config(const eg_bpe *b);
size_t eg_bpe_vocab_size(const eg_bpe *b);
/* Token i's bytes (not NUL-terminated) and its type; NULL if i is out of range. */
const char *eg_bpe_token(const eg_bpe *b, size_t i, size_t *len, int *type);
/* Id of the token s[0..n), or -1. */
int32_t eg_bpe_lookup(const eg_bpe *b, const char *s, size_t n);
/* Name of a pre-tokenizer ("gpt-2", ...) or of a GGUF name's pre-tokenizer:
 * eg_bpe_pre_from_name returns 0 for an unknown name. */
const char *eg_bpe_pre_name(int pre);
int eg_bpe_pre_from_name(const char *name, size_t len, int *ignore_merges);

/* Tokenize n_texts texts (texts[i]: lens[i] bytes of UTF-8) in parallel
 * (OpenMP over texts; the result does not depend on the thread count).
 * add_special: add BOS/EOS as the config says. max_length: 0 = no
 * truncation, else keep at most max_length ids in all (the first pieces,
 * then BOS/EOS); it must leave room for BOS/EOS. On success ids[i] is a
 * malloc'd array of out_lens[i] ids (NULL when 0); free them with
 * eg_bpe_free_batch. On failure (EG_EINVAL: invalid UTF-8 naming the text
 * and byte offset, or max_length too small; EG_ENOMEM) nothing is left
 * allocated. */
eg_status eg_bpe_encode_batch(const eg_bpe *b, const char *const *texts, const size_t *lens,
                              size_t n_texts, size_t max_length, int add_special, int32_t **ids,
                              size_t *out_lens, eg_err *err);
void eg_bpe_free_batch(int32_t **ids, size_t n_texts);

#ifdef __cplusplus
}
#endif
#endif /* EG_BPE_H */
