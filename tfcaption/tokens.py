"""Special tokens and their ids, shared by the tokenizer, the models and decoding.

Kept apart from `data.text` so that models and decoding do not import
tensorflow-text (whose kernels a TF Serving binary does not have) for four ints.
"""

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = range(4)
