// Used only by scripts/stack: waits until the local broker answers, then creates the
// project's topics that are missing, all in one JVM (one kafka-topics run per topic costs
// 2-3 s each). scripts/stack compiles it once into .stack/kafka/tools.
//
// usage: CreateTopics <bootstrap> <partitions> <timeout-seconds> <topic>[:<key>=<value>[,...]]...
// exit 0: every topic exists with <partitions> partitions
// exit 2: the broker did not answer in time
// exit 3: a topic exists with another partition count
// exit 1: any other failure
// -Dstack.replication.factor=N (default 1): replication factor of the topics it creates.

import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.errors.InvalidReplicationFactorException;
import org.apache.kafka.common.errors.RetriableException;
import org.apache.kafka.common.errors.TopicExistsException;

public class CreateTopics {
    private static final short REPLICATION_FACTOR =
            Short.parseShort(System.getProperty("stack.replication.factor", "1"));

    public static void main(String[] args) throws Exception {
        if (args.length < 4) {
            System.err.println("usage: CreateTopics <bootstrap> <partitions> <timeout-seconds> <topic>[:k=v,...]...");
            System.exit(1);
        }
        String bootstrap = args[0];
        int partitions = Integer.parseInt(args[1]);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[2]));

        Map<String, Map<String, String>> wanted = new LinkedHashMap<>();
        for (int i = 3; i < args.length; i++) {
            String[] nameAndConfigs = args[i].split(":", 2);
            Map<String, String> configs = new HashMap<>();
            if (nameAndConfigs.length == 2 && !nameAndConfigs[1].isEmpty()) {
                for (String kv : nameAndConfigs[1].split(",")) {
                    String[] p = kv.split("=", 2);
                    configs.put(p[0], p[1]);
                }
            }
            wanted.put(nameAndConfigs[0], configs);
        }

        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        // Short per-call timeouts so that the loop below, not the client, owns the deadline.
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "5000");
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "500");

        try (Admin admin = Admin.create(props)) {
            // A broker that already answers metadata requests can still be fenced for a
            // moment ("only 0 broker(s) are registered"), and a topic just created can be
            // unknown to the next metadata request, so the whole list-create-describe step is
            // retried, but only on errors that can go away by waiting.
            Throwable last = null;
            Map<String, TopicDescription> described = null;
            boolean done = false;
            while (!done && System.nanoTime() < deadline) {
                try {
                    createMissing(admin, wanted, partitions);
                    described = admin.describeTopics(wanted.keySet()).allTopicNames().get(5, TimeUnit.SECONDS);
                    done = true;
                } catch (TimeoutException e) {
                    last = e;
                } catch (ExecutionException e) {
                    Throwable cause = e.getCause();
                    if (!(cause instanceof RetriableException
                            || cause instanceof InvalidReplicationFactorException
                            || cause instanceof TopicExistsException)) {
                        System.err.println("creating topics failed: " + cause);
                        System.exit(1);
                    }
                    last = cause;
                }
                if (!done) {
                    Thread.sleep(500);
                }
            }
            if (!done) {
                System.err.println("broker at " + bootstrap + " did not answer in time: " + last);
                System.exit(2);
            }

            // The saga relies on co-partitioned topics: a topic left over from a run with
            // another STACK_PARTITIONS would silently break that, so refuse it loudly.
            boolean mismatch = false;
            for (TopicDescription d : described.values()) {
                if (d.partitions().size() != partitions) {
                    System.err.println("topic " + d.name() + " has " + d.partitions().size()
                            + " partitions, expected " + partitions);
                    mismatch = true;
                }
            }
            if (mismatch) {
                System.exit(3);
            }
        }
    }

    private static void createMissing(Admin admin, Map<String, Map<String, String>> wanted, int partitions)
            throws ExecutionException, InterruptedException, TimeoutException {
        Set<String> existing = admin.listTopics().names().get(5, TimeUnit.SECONDS);
        List<NewTopic> toCreate = new ArrayList<>();
        for (Map.Entry<String, Map<String, String>> e : wanted.entrySet()) {
            if (!existing.contains(e.getKey())) {
                toCreate.add(new NewTopic(e.getKey(), partitions, REPLICATION_FACTOR).configs(e.getValue()));
            }
        }
        if (toCreate.isEmpty()) {
            return;
        }
        // If this fails part-way, the next round lists again and creates only the rest.
        admin.createTopics(toCreate).all().get(30, TimeUnit.SECONDS);
        for (NewTopic t : toCreate) {
            System.out.println("created topic " + t.name() + " (" + partitions + " partitions)");
        }
    }
}
