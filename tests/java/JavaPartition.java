// For each key read on stdin (one per line, UTF-8), prints the partition Kafka's Java producer
// gives a record with that key among N partitions (the first argument): it calls the producer's
// own BuiltInPartitioner.partitionForKey from kafka-clients on the class path.
// Run: java -cp "<kafka>/libs/*" tests/java/JavaPartition.java 12 < keys
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import org.apache.kafka.clients.producer.internals.BuiltInPartitioner;

public class JavaPartition {
    public static void main(String[] args) throws IOException {
        int partitions = Integer.parseInt(args[0]);
        BufferedReader in =
                new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        for (String key; (key = in.readLine()) != null; ) {
            byte[] bytes = key.getBytes(StandardCharsets.UTF_8);
            System.out.println(BuiltInPartitioner.partitionForKey(bytes, partitions));
        }
    }
}
