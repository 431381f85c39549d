// A real HDFS and a real YARN in one JVM on localhost, for the tests and for trying the cluster mode by hand.
//
//   java -cp 'var/hadoop/lib/*' hadoop/MiniHadoop.java [--dir var/hadoop] [--datanodes 1] [--ha]
//        [--nm-memory-mb 12288] [--nm-vcores 8] [--no-yarn] [--exit-on-stdin-eof]
//        [--capacity-scheduler docker/hadoop/conf/capacity-scheduler.xml]
//
// No build step: Java 11+ compiles a single source file on the fly. `make hadoop-up` runs it in the background.
// It starts MiniDFSCluster (WebHDFS on; with --ha two NameNodes of nameservice `minihdfs`, nn1 active) and
// MiniYARNCluster (one NodeManager), on ports the OS picks, then writes into <dir>/conf:
//   core-site.xml, hdfs-site.xml, yarn-site.xml  the client configuration (HADOOP_CONF_DIR, YARN_CONF_DIR);
//   minihadoop.json                              the addresses (written last: its presence means ready).
// SIGTERM (or EOF on stdin with --exit-on-stdin-eof) stops YARN, which kills its containers, then HDFS, and
// removes minihadoop.json. Each start formats a fresh HDFS under <dir>/data.
import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.MiniDFSCluster;
import org.apache.hadoop.hdfs.MiniDFSNNTopology;
import org.apache.hadoop.yarn.conf.YarnConfiguration;
import org.apache.hadoop.yarn.server.MiniYARNCluster;

public class MiniHadoop {
    static final String NAMESERVICE = "minihdfs";
    static volatile int activeNameNode = 0;
    static long startNanos;

    public static void main(String[] argv) {
        try {
            run(argv);
        } catch (Throwable t) {
            // The daemons' threads are not daemon threads: without exit() a failed start leaves a live JVM.
            t.printStackTrace();
            System.exit(1);
        }
    }

    static void run(String[] argv) throws Exception {
        File dir = new File("var/hadoop");
        int dataNodes = 1;
        boolean ha = false;
        boolean yarn = true;
        boolean stdinEof = false;
        int nmMemoryMb = 12288;
        int nmVcores = 8;
        File capacityScheduler = new File("docker/hadoop/conf/capacity-scheduler.xml");  // more than the 2 cores here: YARN only counts them; Spark AM + 2 executors fit
        for (int i = 0; i < argv.length; i++) {
            switch (argv[i]) {
                case "--dir": dir = new File(argv[++i]); break;
                case "--datanodes": dataNodes = Integer.parseInt(argv[++i]); break;
                case "--ha": ha = true; break;
                case "--no-yarn": yarn = false; break;
                case "--nm-memory-mb": nmMemoryMb = Integer.parseInt(argv[++i]); break;
                case "--nm-vcores": nmVcores = Integer.parseInt(argv[++i]); break;
                case "--exit-on-stdin-eof": stdinEof = true; break;
                case "--capacity-scheduler": capacityScheduler = new File(argv[++i]); break;
                default:
                    System.err.println("unknown argument " + argv[i] + " (see the header of hadoop/MiniHadoop.java)");
                    System.exit(2);
            }
        }
        dir = dir.getAbsoluteFile();
        File data = new File(dir, "data");
        File confDir = new File(dir, "conf");
        File ready = new File(confDir, "minihadoop.json");
        Files.deleteIfExists(ready.toPath());
        deleteTree(data);
        confDir.mkdirs();
        // MiniYARNCluster keeps its NodeManager folders under GenericTestUtils' test dir (./target by default).
        System.setProperty("test.build.data", new File(data, "yarn").getPath());
        long t0 = System.nanoTime();

        Configuration conf = new Configuration();
        conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, new File(data, "hdfs").getPath());
        conf.setInt("dfs.replication", 1);
        conf.setBoolean("dfs.permissions.enabled", false);  // as docker/hadoop/conf/hdfs-site.xml
        conf.setBoolean("dfs.webhdfs.enabled", true);
        conf.set("hadoop.tmp.dir", new File(data, "tmp").getPath());
        MiniDFSCluster.Builder builder = new MiniDFSCluster.Builder(conf).numDataNodes(dataNodes).format(true);
        if (ha) {
            builder.nnTopology(new MiniDFSNNTopology().addNameservice(new MiniDFSNNTopology.NSConf(NAMESERVICE)
                    .addNN(new MiniDFSNNTopology.NNConf("nn1"))
                    .addNN(new MiniDFSNNTopology.NNConf("nn2"))));
        }
        MiniDFSCluster dfs = builder.build();
        if (ha) {
            dfs.transitionToActive(0);
        }
        dfs.waitActive();
        dfs.waitClusterUp();
        Configuration dfsConf = dfs.getConfiguration(0);

        MiniYARNCluster rm = null;
        Configuration yarnConf = null;
        if (yarn) {
            YarnConfiguration yc = new YarnConfiguration(dfsConf);
            yc.setInt(YarnConfiguration.NM_PMEM_MB, nmMemoryMb);
            // MiniYARNCluster overwrites the NodeManager's memory with this one (4096 by default).
            yc.setInt(YarnConfiguration.YARN_MINICLUSTER_NM_PMEM_MB, nmMemoryMb);
            yc.setInt(YarnConfiguration.NM_VCORES, nmVcores);
            yc.setInt(YarnConfiguration.RM_SCHEDULER_MAXIMUM_ALLOCATION_MB, nmMemoryMb);
            yc.setInt(YarnConfiguration.RM_SCHEDULER_MAXIMUM_ALLOCATION_VCORES, nmVcores);
            yc.setInt(YarnConfiguration.RM_SCHEDULER_MINIMUM_ALLOCATION_MB, 256);
            // TensorFlow reserves far more virtual memory than it uses; the physical check stays on.
            yc.setBoolean(YarnConfiguration.NM_VMEM_CHECK_ENABLED, false);
            yc.setFloat(YarnConfiguration.NM_MAX_PER_DISK_UTILIZATION_PERCENTAGE, 99.9f);
            // The queues of the compose stack (default 30 %, tfhub 70 %): one file for both.
            Configuration cs = new Configuration(false);
            if (!capacityScheduler.isFile()) {
                throw new IllegalArgumentException(capacityScheduler + " not found: run from the repository root or "
                        + "pass --capacity-scheduler FILE");
            }
            cs.addResource(new org.apache.hadoop.fs.Path(capacityScheduler.getAbsolutePath()));
            for (Map.Entry<String, String> e : cs) {
                yc.set(e.getKey(), e.getValue(), capacityScheduler.getPath());
            }
            yc.setInt(YarnConfiguration.DEBUG_NM_DELETE_DELAY_SEC, 600);
            rm = new MiniYARNCluster("minihadoop", 1, 1, 1);
            rm.init(yc);
            rm.start();
            yarnConf = rm.getConfig();
            // start() may return before the ResourceManager has put its bound port into the configuration.
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
            while (yarnConf.get(YarnConfiguration.RM_ADDRESS, "").endsWith(":0") || !rm.waitForNodeManagersToConnect(1000)) {
                if (System.nanoTime() > deadline) {
                    throw new IllegalStateException("the ResourceManager or its NodeManager did not come up in 60 s");
                }
            }
        }

        final MiniDFSCluster dfsFinal = dfs;
        final MiniYARNCluster rmFinal = rm;
        final CountDownLatch stopRequested = new CountDownLatch(1);
        // SIGTERM and SIGINT stop the daemons on the main thread, outside JVM shutdown: Hadoop's own shutdown
        // hooks cannot be removed during shutdown, which would abort the DataNode's stop half way.
        sun.misc.Signal.handle(new sun.misc.Signal("TERM"), sig -> stopRequested.countDown());
        sun.misc.Signal.handle(new sun.misc.Signal("INT"), sig -> stopRequested.countDown());
        Runtime.getRuntime().addShutdownHook(new Thread(() -> ready.delete(), "minihadoop-marker"));

        writeConf(new File(confDir, "core-site.xml"), coreSite(dfs, ha));
        writeConf(new File(confDir, "hdfs-site.xml"), hdfsSite(dfsConf));
        if (yarnConf != null) {
            writeConf(new File(confDir, "yarn-site.xml"), yarnSite(yarnConf));
        } else {
            Files.deleteIfExists(new File(confDir, "yarn-site.xml").toPath());
        }
        startNanos = System.nanoTime() - t0;
        final Configuration yarnConfFinal = yarnConf;
        writeAtomically(ready, readyJson(dfs, ha, yarnConf, startNanos));
        System.out.println("MiniHadoop ready: " + ready + " (" + (System.nanoTime() - t0) / 1_000_000 + " ms)");
        System.out.flush();

        if (stdinEof) {
            final boolean haFinal = ha;
            Thread watch = new Thread(() -> {
                // The parent holds the pipe open while it wants us alive. A line "failover N" makes NameNode N
                // (0 or 1) the active one, as `hdfs haadmin -failover` would; minihadoop.json then says so.
                try (java.io.BufferedReader in = new java.io.BufferedReader(
                        new java.io.InputStreamReader(System.in, StandardCharsets.UTF_8))) {
                    String line;
                    while ((line = in.readLine()) != null) {
                        String[] cmd = line.trim().split("\\s+");
                        if (cmd.length == 2 && cmd[0].equals("failover") && haFinal) {
                            int to = Integer.parseInt(cmd[1]);
                            dfsFinal.transitionToStandby(1 - to);
                            dfsFinal.transitionToActive(to);
                            activeNameNode = to;
                            writeAtomically(ready, readyJson(dfsFinal, true, yarnConfFinal, startNanos));
                            System.out.println("MiniHadoop: nn" + (to + 1) + " is active");
                        } else {
                            System.out.println("MiniHadoop: unknown command '" + line + "' (failover N, with --ha)");
                        }
                        System.out.flush();
                    }
                } catch (Exception e) {
                    e.printStackTrace();  // a broken pipe means the same as EOF
                }
                stopRequested.countDown();
            }, "minihadoop-stdin");
            watch.setDaemon(true);
            watch.start();
        }
        stopRequested.await();
        Files.deleteIfExists(ready.toPath());
        long t1 = System.nanoTime();
        if (rmFinal != null) {
            try {
                rmFinal.stop();  // the NodeManager kills the containers it launched
            } catch (Throwable t) {
                t.printStackTrace();
            }
        }
        try {
            dfsFinal.shutdown(true);
        } catch (Throwable t) {
            t.printStackTrace();
        }
        System.out.println("MiniHadoop stopped (" + (System.nanoTime() - t1) / 1_000_000 + " ms)");
        System.out.flush();
        System.exit(0);
    }

    static Map<String, String> coreSite(MiniDFSCluster dfs, boolean ha) {
        Map<String, String> m = new TreeMap<>();
        m.put("fs.defaultFS", ha ? "hdfs://" + NAMESERVICE : "hdfs://localhost:" + dfs.getNameNodePort());
        return m;
    }

    static Map<String, String> hdfsSite(Configuration c) {
        Map<String, String> m = new TreeMap<>();
        m.put("dfs.replication", "1");
        m.put("dfs.permissions.enabled", "false");
        for (Map.Entry<String, String> e : c) {
            String k = e.getKey();
            if (k.startsWith("dfs.nameservices") || k.startsWith("dfs.ha.namenodes.")
                    || k.startsWith("dfs.namenode.rpc-address") || k.startsWith("dfs.namenode.http-address")
                    || k.startsWith("dfs.client.failover.proxy.provider.")) {
                if (c.get(k).endsWith(":0")) {
                    continue;  // an unbound default, not an address
                }
                m.put(k, c.get(k));
            }
        }
        if (m.containsKey("dfs.ha.namenodes." + NAMESERVICE)) {
            m.put("dfs.client.failover.proxy.provider." + NAMESERVICE,
                    "org.apache.hadoop.hdfs.server.namenode.ha.ConfiguredFailoverProxyProvider");
        }
        return m;
    }

    static Map<String, String> yarnSite(Configuration c) {
        Map<String, String> m = new TreeMap<>();
        for (Map.Entry<String, String> e : c) {
            String k = e.getKey();
            // The bound addresses only: the unused https one and the wildcard hostname would mislead a client.
            if (k.startsWith("yarn.resourcemanager.") && k.endsWith("address") && !k.contains("https")) {
                m.put(k, c.get(k));
            }
        }
        m.put("yarn.resourcemanager.scheduler.class", c.get("yarn.resourcemanager.scheduler.class"));
        return m;
    }

    static String readyJson(MiniDFSCluster dfs, boolean ha, Configuration yarnConf, long nanos) {
        List<String> webhdfs = new ArrayList<>();
        List<String> rpc = new ArrayList<>();
        for (int i = 0; i < dfs.getNumNameNodes(); i++) {
            webhdfs.add("\"http://localhost:" + dfs.getNameNode(i).getHttpAddress().getPort() + "\"");
            rpc.add("\"localhost:" + dfs.getNameNodePort(i) + "\"");
        }
        StringBuilder sb = new StringBuilder("{\n");
        sb.append("  \"pid\": ").append(ProcessHandle.current().pid()).append(",\n");
        sb.append("  \"fs_default_fs\": \"").append(coreSite(dfs, ha).get("fs.defaultFS")).append("\",\n");
        sb.append("  \"namenode_rpc\": ").append(rpc).append(",\n");
        sb.append("  \"webhdfs\": ").append(webhdfs).append(",\n");
        if (ha) {
            sb.append("  \"active_namenode\": ").append(activeNameNode).append(",\n");
        }
        sb.append("  \"datanodes\": ").append(dfs.getDataNodes().size()).append(",\n");
        if (yarnConf != null) {
            sb.append("  \"rm_address\": \"").append(yarnConf.get(YarnConfiguration.RM_ADDRESS)).append("\",\n");
            sb.append("  \"rm_webapp\": \"http://").append(yarnConf.get(YarnConfiguration.RM_WEBAPP_ADDRESS))
              .append("\",\n");
        }
        sb.append("  \"start_ms\": ").append(nanos / 1_000_000).append("\n}\n");
        return sb.toString();
    }

    static void writeConf(File f, Map<String, String> props) throws IOException {
        Configuration out = new Configuration(false);
        props.forEach((k, v) -> out.set(k, v, "MiniHadoop"));
        File tmp = new File(f.getPath() + ".tmp");
        try (OutputStream os = new FileOutputStream(tmp)) {
            out.writeXml(os);
        }
        Files.move(tmp.toPath(), f.toPath(), StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
    }

    static void writeAtomically(File f, String text) throws IOException {
        File tmp = new File(f.getPath() + ".tmp");
        Files.writeString(tmp.toPath(), text, StandardCharsets.UTF_8);
        Files.move(tmp.toPath(), f.toPath(), StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
    }

    static void deleteTree(File f) throws IOException {
        File[] children = f.listFiles();
        if (children != null) {
            for (File c : children) {
                if (!Files.isSymbolicLink(c.toPath())) {
                    deleteTree(c);
                } else {
                    Files.delete(c.toPath());
                }
            }
        }
        Files.deleteIfExists(f.toPath());
    }
}
