// Runs Kafka's AclCommand once per line of a file, all in one JVM. `seqmon-admin acls --apply`
// runs the ACL command once per batch (about 30 of them); a JVM start and an admin connection
// each cost about a second, so tools/kafka/broker.sh records the batches (see the acl-command
// wrapper it writes) and replays them here in a few seconds.
//
//   java -cp "$libs/*:$classes" AclBatch FILE COMMON_ARGS...
//
// Each line of FILE holds one batch's arguments separated by spaces (principal, topic, group and
// transactional-id names hold none); COMMON_ARGS (--bootstrap-server, --command-config) go first.
// AclCommand exits the JVM with status 1 on the first failure and prints why on stdout.

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

public class AclBatch {
    public static void main(String[] argv) throws Exception {
        List<String> common = Arrays.asList(argv).subList(1, argv.length);
        List<String[]> batches = new ArrayList<>();
        for (String line : Files.readAllLines(Path.of(argv[0]))) {
            if (!line.isBlank()) {
                List<String> args = new ArrayList<>(common);
                args.addAll(Arrays.asList(line.trim().split("\\s+")));
                batches.add(args.toArray(new String[0]));
            }
        }
        // A few at a time: each is mostly waiting for the broker (connect, authenticate, describe,
        // create). The batches touch different resources, so their order does not matter.
        ExecutorService pool = Executors.newFixedThreadPool(6);
        List<Future<?>> done = new ArrayList<>();
        for (String[] args : batches) {
            done.add(pool.submit(() -> org.apache.kafka.tools.AclCommand.main(args)));
        }
        for (Future<?> f : done) {
            f.get();
        }
        pool.shutdown();
        System.out.println(batches.size() + " ACL command batches applied");
        System.exit(0);
    }
}
