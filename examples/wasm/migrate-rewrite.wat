;; A WASM filter hook: on `migrate` and `restore` it moves interfaces off the legacy
;; bridge, replacing every `br-legacy` with `br0` in the domain XML it reads on stdin,
;; and prints the result (the new XML). When there is nothing to replace it prints
;; nothing, so libvirt keeps the XML as it is (and does not taint the guest).
;; Install as require-owner.wat says: qemu.plugins/ on a libvirt host, qemu.d/ of an
;; embedding driver's own hooks dir.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))

  ;; Memory map: 0-31 scratch, 64-255 constants, 1024 argv pointers, 2048 argv
  ;; strings, 65536.. stdin.
  (memory (export "memory") 2)
  (data (i32.const 64) "br-legacy")     ;; 9 bytes: what to replace
  (data (i32.const 80) "br0")           ;; 3 bytes: the replacement
  (data (i32.const 96) "migrate\00")
  (data (i32.const 112) "restore\00")

  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 16))))

  (func $read_all (result i32) (local $len i32)
    (block $eof
      (loop $more
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

  (func $equal (param $a i32) (param $b i32) (param $n i32) (result i32) (local $i i32)
    (block $no
      (loop $next
        (if (i32.ge_u (local.get $i) (local.get $n)) (then (return (i32.const 1))))
        (br_if $no (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                           (i32.load8_u (i32.add (local.get $b) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  ;; Writes the `len` bytes at 65536 with every `br-legacy` replaced; returns how many
  ;; replacements it made. With `emit` 0 it only counts.
  (func $rewrite (param $len i32) (param $emit i32) (result i32)
    (local $i i32) (local $from i32) (local $count i32)
    (block $end
      (loop $scan
        (br_if $end (i32.gt_u (i32.add (local.get $i) (i32.const 9)) (local.get $len)))
        (if (call $equal (i32.add (i32.const 65536) (local.get $i)) (i32.const 64) (i32.const 9))
          (then
            (if (local.get $emit)
              (then
                (call $write (i32.const 1) (i32.add (i32.const 65536) (local.get $from)) (i32.sub (local.get $i) (local.get $from)))
                (call $write (i32.const 1) (i32.const 80) (i32.const 3))))
            (local.set $count (i32.add (local.get $count) (i32.const 1)))
            (local.set $i (i32.add (local.get $i) (i32.const 9)))
            (local.set $from (local.get $i))
            (br $scan)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
    (if (local.get $emit)
      (then (call $write (i32.const 1) (i32.add (i32.const 65536) (local.get $from)) (i32.sub (local.get $len) (local.get $from)))))
    (local.get $count))

  (func (export "_start") (local $op i32) (local $len i32)
    (drop (call $args_sizes_get (i32.const 8) (i32.const 12)))
    (drop (call $args_get (i32.const 1024) (i32.const 2048)))
    (local.set $op (i32.load (i32.const 1032)))     ;; argv[2]
    (if (i32.eqz (i32.or (call $equal (local.get $op) (i32.const 96) (i32.const 8))
                         (call $equal (local.get $op) (i32.const 112) (i32.const 8))))
      (then (return)))
    (local.set $len (call $read_all))
    (if (call $rewrite (local.get $len) (i32.const 0))
      (then (drop (call $rewrite (local.get $len) (i32.const 1)))))))
