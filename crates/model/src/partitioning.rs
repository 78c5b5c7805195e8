//! Which partition a keyed record lands in: Kafka's Java producer's rule (murmur2 of the key
//! bytes, made positive, modulo the partition count), which every seqmon producer uses
//! (librdkafka's `murmur2_random`). A processor that must reach every partition of a topic (a
//! watermark broadcast) picks keys with [`key_for_partition`]; nothing else should depend on the
//! mapping.

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`): seed 0x9747b28c, little-endian
/// 4-byte blocks.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut blocks = data.chunks_exact(4);
    for b in &mut blocks {
        let mut k = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = blocks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(first) = tail.first() {
        h ^= u32::from(*first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// The partition of `key` among `partitions` (> 0), as Kafka's Java producer and every seqmon
/// producer choose it.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// The first key `<prefix><i>` (i = 0, 1, …) that lands in `partition` of `partitions`: a stable
/// way to address each partition through the producer's own keyed partitioning.
pub fn key_for_partition(prefix: &str, partition: u32, partitions: u32) -> String {
    (0u64..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| partition_for_key(k.as_bytes(), partitions) == partition % partitions.max(1))
        .expect("murmur2 reaches every partition")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_equal_those_of_kafkas_java_producer() {
        // From kafka-clients 4.1.1's BuiltInPartitioner.partitionForKey with 12 partitions
        // (tests/java/JavaPartition.java); tests/tests/observability.rs compares many more
        // keys, and a stage's real output, with Java at test time.
        let java = [
            ("~watermark/0", 3),
            ("~watermark/1", 0),
            ("~watermark/2", 11),
            ("A00104", 11),
            ("NB551234", 2),
            ("M04567", 0),
            ("REAGENT_KIT_LOT:20394817", 0),
            ("x", 10),
            ("ab", 2),
            ("abc", 3),
            ("abcd", 8),
            ("abcde", 1),
            ("", 9),
        ];
        for (key, partition) in java {
            assert_eq!(partition_for_key(key.as_bytes(), 12), partition, "{key:?}");
        }
    }

    #[test]
    fn a_key_is_found_for_every_partition() {
        for n in [1, 2, 3, 7, 12, 64] {
            for p in 0..n {
                let key = key_for_partition("~watermark/", p, n);
                assert_eq!(partition_for_key(key.as_bytes(), n), p);
            }
        }
        assert_eq!(key_for_partition("~w/", 0, 1), "~w/0");
    }
}
