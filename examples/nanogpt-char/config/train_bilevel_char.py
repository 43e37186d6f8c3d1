# nanoGPT's config/train_shakespeare_char.py made small enough for one CPU: a trial
# trains for about half a minute under cpus=1 (a bilevel search edits this file)

out_dir = 'out' # the task's outputs: the trusted scorer reads out/ckpt.pt
eval_interval = 500 # = max_iters: estimate at the start and the end, then save
eval_iters = 10 # train.py's own estimate; the scorer measures val_loss itself
log_interval = 50
always_save_checkpoint = True # the scorer needs the last checkpoint

wandb_log = False

dataset = 'shakespeare_char' # data/shakespeare_char, mounted read-only
gradient_accumulation_steps = 1
batch_size = 32
block_size = 64 # context of up to 64 previous characters (the scorer's context)

# a baby GPT
n_layer = 2
n_head = 4
n_embd = 64
dropout = 0.0
bias = False

learning_rate = 1e-3
max_iters = 500
lr_decay_iters = 500 # make equal to max_iters usually
min_lr = 1e-4 # learning_rate / 10 usually
beta2 = 0.99
weight_decay = 1e-1
warmup_iters = 50

device = 'cpu'
compile = False
dtype = 'float32'
