;; A WASM hook (WASI preview-1 command module) that refuses to prepare a guest whose
;; domain XML has no <owner:owner> element, like examples/hooks/qemu.d/20-require-owner.
;; It reads argv and stdin, writes its reason to stderr and exits 1 to veto.
;;
;; Build: any WAT assembler, e.g. `wasm-tools parse require-owner.wat -o 20-require-owner.wasm`
;; (the tests compile it with the `wat` crate). Install, on a libvirt host: copy the .wasm
;; into /etc/libvirt/hooks/qemu.plugins/ (hookctl's dispatcher runs it; libvirt runs qemu.d/
;; itself and would skip it). In a driver that embeds the libraries: into qemu.d/ of its
;; own hooks dir (`RegistryBuilder::hooks_dir`), beside its scripts.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))

  ;; Memory map: 0-31 scratch (iovec, counts), 64-255 constant strings,
  ;; 1024 argv pointers, 2048 argv strings, 65536.. stdin (grows as needed).
  (memory (export "memory") 2)
  (data (i32.const 64) "<owner:owner")                ;; 12 bytes
  (data (i32.const 96) "prepare\00")
  (data (i32.const 128) "guest has no <owner:owner> element in its <metadata>; refused by a WASM hook\n") ;; 77 bytes

  ;; write(fd, ptr, len)
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 16))))

  ;; Reads all of stdin to 65536; returns its length.
  (func $read_all (result i32) (local $len i32)
    (block $eof
      (loop $more
        ;; keep 64 KiB free past the data
        (if (i32.gt_u (i32.add (local.get $len) (i32.const 131072)) (i32.mul (memory.size) (i32.const 65536)))
          (then (drop (memory.grow (i32.const 1)))))
        (i32.store (i32.const 0) (i32.add (i32.const 65536) (local.get $len)))
        (i32.store (i32.const 4) (i32.const 65536))
        (i32.store (i32.const 16) (i32.const 0))
        (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
        (br_if $eof (i32.eqz (i32.load (i32.const 16))))
        (local.set $len (i32.add (local.get $len) (i32.load (i32.const 16))))
        (br $more)))
    (local.get $len))

  ;; Whether the `n` bytes at `a` equal those at `b`.
  (func $equal (param $a i32) (param $b i32) (param $n i32) (result i32) (local $i i32)
    (block $no
      (loop $next
        (if (i32.ge_u (local.get $i) (local.get $n)) (then (return (i32.const 1))))
        (br_if $no (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                           (i32.load8_u (i32.add (local.get $b) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  ;; Whether the `len` bytes at `hay` contain the `n` bytes at `needle`.
  (func $contains (param $hay i32) (param $len i32) (param $needle i32) (param $n i32) (result i32) (local $i i32)
    (block $no
      (loop $next
        (br_if $no (i32.gt_u (i32.add (local.get $i) (local.get $n)) (local.get $len)))
        (if (call $equal (i32.add (local.get $hay) (local.get $i)) (local.get $needle) (local.get $n))
          (then (return (i32.const 1))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  (func (export "_start") (local $len i32)
    (drop (call $args_sizes_get (i32.const 8) (i32.const 12)))
    (drop (call $args_get (i32.const 1024) (i32.const 2048)))
    ;; argv[2] is the operation: act on "prepare" (with its NUL) only.
    (if (i32.eqz (call $equal (i32.load (i32.const 1032)) (i32.const 96) (i32.const 8)))
      (then (return)))
    (local.set $len (call $read_all))
    (if (i32.eqz (call $contains (i32.const 65536) (local.get $len) (i32.const 64) (i32.const 12)))
      (then
        (call $write (i32.const 2) (i32.const 128) (i32.const 77))
        (call $proc_exit (i32.const 1))))))
